// Causal attention for one head and one block of queries, fused: scores, softmax and P·V stay in a
// per-thread scratch of (rows × visible keys) that fits in L2, instead of three separate passes
// through sgemm (whose packing and thread hand-offs dominate at an inner dimension of 64).
//
// Both products use a 6 × 16 register block written on 16-lane vectors: with AVX2 each is two ymm
// registers (12 accumulators, as OpenBLAS's float kernels on AVX2: per step 2 loads and 6
// broadcasts feed 12 fused multiply-adds); in an AVX-512 build (SHEAF_CPU_ISA=avx512) one zmm
// register each, so 6 fused multiply-adds of 16 lanes per step.

/// The layout the scores product reads keys in: per panel of 16 consecutive keys, headDim rows of
/// 16 floats (panel p, dimension d, key j at [(p·headDim + d)·16 + j]); keys past the end are 0.
public enum KeyPanels {
    public static let width = 16

    /// Floats `pack` writes for `keys` keys of `headDim` dimensions.
    public static func count(keys: Int, headDim: Int) -> Int { (keys + width - 1) / width * width * headDim }

    /// Packs keys[0..<keys] (rows of `rowStride` floats, the head's headDim columns) into panels.
    public static func pack(
        _ keyRows: UnsafePointer<Float>, rowStride: Int, keys: Int, headDim: Int, into panels: UnsafeMutablePointer<Float>
    ) {
        for p in 0..<(keys + width - 1) / width {
            let panel = panels + p * headDim * width
            for j in 0..<width {
                let key = p * width + j
                if key < keys {
                    let row = keyRows + key * rowStride
                    for d in 0..<headDim { panel[d * width + j] = row[d] }
                } else {
                    for d in 0..<headDim { panel[d * width + j] = 0 }
                }
            }
        }
    }
}

public enum AttentionKernel {
    /// Rows per register block.
    static let rowBlock = 6

    /// Floats of scratch `attend` needs for `rows` queries seeing at most `keys` keys.
    public static func scratchCount(rows: Int, keys: Int) -> Int {
        rows * ((keys + KeyPanels.width - 1) / KeyPanels.width * KeyPanels.width) + rows
    }

    /// Keys per pass of both products: 128 keys are 32 KiB of packed keys or of a head's values,
    /// which stay in L1/L2 while every row block of the query block uses them (whole rows of
    /// 2048 keys would be 512 KiB per head, streamed from L3 once per 6 rows).
    static let keyChunk = 128

    /// out[i, 0..<headDim] = Σ_j softmax_j(scale · q_i·k_j) v_j over the keys j ≤ firstPosition + i,
    /// for the `rows` queries q_i (rows of `qStride` floats). `headDim` must be a multiple of 16.
    /// `panels`: the head's keys packed by `KeyPanels.pack`; `values`: rows of `vStride` floats;
    /// `scratch`: `scratchCount(rows:keys:)` floats for keys = firstPosition + rows.
    public static func attend(
        queries q: UnsafePointer<Float>, qStride: Int, rows: Int, firstPosition: Int, scale: Float,
        panels: UnsafePointer<Float>, values v: UnsafePointer<Float>, vStride: Int, headDim: Int,
        out: UnsafeMutablePointer<Float>, outStride: Int, scratch: UnsafeMutablePointer<Float>
    ) {
        let lastVisible = firstPosition + rows  // keys seen by the last query
        let ld = (lastVisible + KeyPanels.width - 1) / KeyPanels.width * KeyPanels.width
        let scores = scratch, sums = scratch + rows * ld
        /// Keys seen by the last row of the row block starting at r0.
        func visible(_ r0: Int) -> Int { firstPosition + min(r0 + rowBlock, rows) }

        for k0 in stride(from: 0, to: lastVisible, by: keyChunk) {
            for r0 in stride(from: 0, to: rows, by: rowBlock) where k0 < visible(r0) {
                let n = min(rowBlock, rows - r0)
                for key in stride(from: k0, to: min(k0 + keyChunk, visible(r0)), by: KeyPanels.width) {
                    scoreBlock(
                        q + r0 * qStride, qStride, n, panels + key * headDim, headDim, scale, scores + r0 * ld + key, ld)
                }
            }
        }
        for r0 in stride(from: 0, to: rows, by: rowBlock) {
            for i in r0..<min(r0 + rowBlock, rows) {
                let row = scores + i * ld, own = firstPosition + i + 1
                sums[i] = VectorKernels.softmaxNumerators(row, count: own)
                for j in own..<visible(r0) { row[j] = 0 }  // masked keys the block's products still read
            }
        }
        for k0 in stride(from: 0, to: lastVisible, by: keyChunk) {
            for r0 in stride(from: 0, to: rows, by: rowBlock) where k0 < visible(r0) {
                let n = min(rowBlock, rows - r0), keys = min(k0 + keyChunk, visible(r0)) - k0
                for c in stride(from: 0, to: headDim, by: 16) {
                    valueBlock(
                        scores + r0 * ld + k0, ld, n, keys, v + k0 * vStride + c, vStride, k0 > 0,
                        out + r0 * outStride + c, outStride)
                }
            }
        }
        for i in 0..<rows { VectorKernels.scale(out + i * outStride, count: headDim, by: 1 / sums[i]) }
    }

    /// scores[i, 0..<16] = scale · q_i · panel for the n ≤ 6 rows (rows past n repeat the last one
    /// in registers and are not stored).
    @inline(__always)
    static func scoreBlock(
        _ q: UnsafePointer<Float>, _ qStride: Int, _ n: Int, _ panel: UnsafePointer<Float>, _ headDim: Int, _ scale: Float,
        _ scores: UnsafeMutablePointer<Float>, _ ld: Int
    ) {
        let q0 = q, q1 = q + min(1, n - 1) * qStride, q2 = q + min(2, n - 1) * qStride
        let q3 = q + min(3, n - 1) * qStride, q4 = q + min(4, n - 1) * qStride, q5 = q + min(5, n - 1) * qStride
        var a0 = Lanes16(), a1 = Lanes16(), a2 = Lanes16(), a3 = Lanes16(), a4 = Lanes16(), a5 = Lanes16()
        for d in 0..<headDim {
            let k = load16(panel + d * 16)
            a0 = a0.addingProduct(Lanes16(repeating: q0[d]), k)
            a1 = a1.addingProduct(Lanes16(repeating: q1[d]), k)
            a2 = a2.addingProduct(Lanes16(repeating: q2[d]), k)
            a3 = a3.addingProduct(Lanes16(repeating: q3[d]), k)
            a4 = a4.addingProduct(Lanes16(repeating: q4[d]), k)
            a5 = a5.addingProduct(Lanes16(repeating: q5[d]), k)
        }
        let s = Lanes16(repeating: scale)
        store16(a0 * s, scores)
        guard n > 1 else { return }
        store16(a1 * s, scores + ld)
        guard n > 2 else { return }
        store16(a2 * s, scores + 2 * ld)
        guard n > 3 else { return }
        store16(a3 * s, scores + 3 * ld)
        guard n > 4 else { return }
        store16(a4 * s, scores + 4 * ld)
        guard n > 5 else { return }
        store16(a5 * s, scores + 5 * ld)
    }

    /// out[i, 0..<16] (+)= Σ_{j<keys} p[i, j] · v[j, 0..<16] for the n ≤ 6 rows of p; adds to
    /// what out holds when `accumulate`.
    @inline(__always)
    static func valueBlock(
        _ p: UnsafePointer<Float>, _ ld: Int, _ n: Int, _ keys: Int, _ v: UnsafePointer<Float>, _ vStride: Int,
        _ accumulate: Bool, _ out: UnsafeMutablePointer<Float>, _ outStride: Int
    ) {
        let p0 = p, p1 = p + min(1, n - 1) * ld, p2 = p + min(2, n - 1) * ld
        let p3 = p + min(3, n - 1) * ld, p4 = p + min(4, n - 1) * ld, p5 = p + min(5, n - 1) * ld
        let o0 = out, o1 = out + min(1, n - 1) * outStride, o2 = out + min(2, n - 1) * outStride
        let o3 = out + min(3, n - 1) * outStride, o4 = out + min(4, n - 1) * outStride, o5 = out + min(5, n - 1) * outStride
        var a0 = Lanes16(), a1 = Lanes16(), a2 = Lanes16(), a3 = Lanes16(), a4 = Lanes16(), a5 = Lanes16()
        if accumulate { (a0, a1, a2, a3, a4, a5) = (load16(o0), load16(o1), load16(o2), load16(o3), load16(o4), load16(o5)) }
        for j in 0..<keys {
            let w = load16(v + j * vStride)
            a0 = a0.addingProduct(Lanes16(repeating: p0[j]), w)
            a1 = a1.addingProduct(Lanes16(repeating: p1[j]), w)
            a2 = a2.addingProduct(Lanes16(repeating: p2[j]), w)
            a3 = a3.addingProduct(Lanes16(repeating: p3[j]), w)
            a4 = a4.addingProduct(Lanes16(repeating: p4[j]), w)
            a5 = a5.addingProduct(Lanes16(repeating: p5[j]), w)
        }
        // Rows past n alias row n − 1 and hold the same sums: storing them twice is harmless.
        store16(a5, o5)
        store16(a4, o4)
        store16(a3, o3)
        store16(a2, o2)
        store16(a1, o1)
        store16(a0, o0)
    }
}
