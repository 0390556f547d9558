// Causal attention for one head and one block of queries, fused: scores, softmax and P·V stay in a
// per-thread scratch of (rows × visible keys) that fits in L2, instead of three separate passes
// through sgemm (whose packing and thread hand-offs dominate at an inner dimension of 64).
//
// Both products use a 6 × 16 register block (12 vector accumulators, as OpenBLAS's float kernels
// on AVX2): per step 2 vector loads and 6 broadcasts feed 12 fused multiply-adds.

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
        var a00 = Float8(), a01 = Float8(), a10 = Float8(), a11 = Float8(), a20 = Float8(), a21 = Float8()
        var a30 = Float8(), a31 = Float8(), a40 = Float8(), a41 = Float8(), a50 = Float8(), a51 = Float8()
        for d in 0..<headDim {
            let k0 = load(panel + d * 16), k1 = load(panel + d * 16 + 8)
            var b = Float8(repeating: q0[d])
            a00 = a00.addingProduct(b, k0)
            a01 = a01.addingProduct(b, k1)
            b = Float8(repeating: q1[d])
            a10 = a10.addingProduct(b, k0)
            a11 = a11.addingProduct(b, k1)
            b = Float8(repeating: q2[d])
            a20 = a20.addingProduct(b, k0)
            a21 = a21.addingProduct(b, k1)
            b = Float8(repeating: q3[d])
            a30 = a30.addingProduct(b, k0)
            a31 = a31.addingProduct(b, k1)
            b = Float8(repeating: q4[d])
            a40 = a40.addingProduct(b, k0)
            a41 = a41.addingProduct(b, k1)
            b = Float8(repeating: q5[d])
            a50 = a50.addingProduct(b, k0)
            a51 = a51.addingProduct(b, k1)
        }
        let s = Float8(repeating: scale)
        store(a00 * s, scores)
        store(a01 * s, scores + 8)
        guard n > 1 else { return }
        store(a10 * s, scores + ld)
        store(a11 * s, scores + ld + 8)
        guard n > 2 else { return }
        store(a20 * s, scores + 2 * ld)
        store(a21 * s, scores + 2 * ld + 8)
        guard n > 3 else { return }
        store(a30 * s, scores + 3 * ld)
        store(a31 * s, scores + 3 * ld + 8)
        guard n > 4 else { return }
        store(a40 * s, scores + 4 * ld)
        store(a41 * s, scores + 4 * ld + 8)
        guard n > 5 else { return }
        store(a50 * s, scores + 5 * ld)
        store(a51 * s, scores + 5 * ld + 8)
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
        var a00 = Float8(), a01 = Float8(), a10 = Float8(), a11 = Float8(), a20 = Float8(), a21 = Float8()
        var a30 = Float8(), a31 = Float8(), a40 = Float8(), a41 = Float8(), a50 = Float8(), a51 = Float8()
        if accumulate {
            (a00, a01, a10, a11) = (load(o0), load(o0 + 8), load(o1), load(o1 + 8))
            (a20, a21, a30, a31) = (load(o2), load(o2 + 8), load(o3), load(o3 + 8))
            (a40, a41, a50, a51) = (load(o4), load(o4 + 8), load(o5), load(o5 + 8))
        }
        for j in 0..<keys {
            let row = v + j * vStride
            let v0 = load(row), v1 = load(row + 8)
            var b = Float8(repeating: p0[j])
            a00 = a00.addingProduct(b, v0)
            a01 = a01.addingProduct(b, v1)
            b = Float8(repeating: p1[j])
            a10 = a10.addingProduct(b, v0)
            a11 = a11.addingProduct(b, v1)
            b = Float8(repeating: p2[j])
            a20 = a20.addingProduct(b, v0)
            a21 = a21.addingProduct(b, v1)
            b = Float8(repeating: p3[j])
            a30 = a30.addingProduct(b, v0)
            a31 = a31.addingProduct(b, v1)
            b = Float8(repeating: p4[j])
            a40 = a40.addingProduct(b, v0)
            a41 = a41.addingProduct(b, v1)
            b = Float8(repeating: p5[j])
            a50 = a50.addingProduct(b, v0)
            a51 = a51.addingProduct(b, v1)
        }
        // Rows past n alias row n − 1 and hold the same sums: storing them twice is harmless.
        store(a50, o5)
        store(a51, o5 + 8)
        store(a40, o4)
        store(a41, o4 + 8)
        store(a30, o3)
        store(a31, o3 + 8)
        store(a20, o2)
        store(a21, o2 + 8)
        store(a10, o1)
        store(a11, o1 + 8)
        store(a00, o0)
        store(a01, o0 + 8)
    }
}
