import COpenBLAS
import Foundation
import SheafCPUKernels
import SheafCore

/// The forward-pass ops on the CPU, split over the cores. Where the CPU runs SheafCPUKernels
/// (`vectorKernels`), the row loops are its 8-lane ones and attention is its fused kernel (head
/// dimensions that are multiples of 16); otherwise portable scalar loops, and attention through
/// sgemm in query blocks that skip the masked upper triangle.
extension CPUBackend {
    /// Runs `body(row)` for every row, split over the OpenBLAS thread count.
    func forEachRow(_ rows: Int, _ body: @Sendable (Int) -> Void) {
        let workers = min(threads, max(rows, 1))
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            for r in stride(from: w, to: rows, by: workers) { body(r) }
        }
    }

    public func rmsNorm(_ x: MatrixView, weight: MatrixView, eps: Float, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, weight, out], op: "rmsNorm")
        try Check.rmsNorm(x, weight, out, eps: eps)
        nonisolated(unsafe) let px = floats(x), pw = floats(weight), po = floats(out)
        let d = x.cols, xs = x.rowStride, os = out.rowStride, vector = vectorKernels
        forEachRow(x.rows) { r in
            let xr = px + r * xs, orow = po + r * os
            if vector {
                VectorKernels.rmsNorm(xr, weight: pw, eps: eps, out: orow, count: d)
                return
            }
            var sumSquares: Float = 0
            for c in 0..<d { sumSquares += xr[c] * xr[c] }
            let scale = 1 / (sumSquares / Float(d) + eps).squareRoot()
            for c in 0..<d { orow[c] = xr[c] * scale * pw[c] }
        }
    }

    public func rope(_ x: MatrixView, headDim: Int, positionOffset: Int, theta: Double) throws(SheafError) {
        try Check.owner(self, [x], op: "rope")
        try Check.rope(x, headDim: headDim, positionOffset: positionOffset, theta: theta)
        let half = headDim / 2
        let table = ropeTables.table(headDim: headDim, theta: theta, positions: positionOffset + x.rows)
        nonisolated(unsafe) let p = floats(x)
        let stride = x.rowStride, heads = x.cols / headDim, vector = vectorKernels
        table.cosines.withUnsafeBufferPointer { cosines in
            table.sines.withUnsafeBufferPointer { sines in
                nonisolated(unsafe) let (c, s) = (cosines.baseAddress!, sines.baseAddress!)
                forEachRow(x.rows) { t in
                    let cr = c + (positionOffset + t) * half, sr = s + (positionOffset + t) * half
                    for head in 0..<heads {
                        let base = p + t * stride + head * headDim
                        if vector {
                            VectorKernels.rotateHalves(base, half: half, cosines: cr, sines: sr)
                            continue
                        }
                        for i in 0..<half {
                            let a = base[i], b = base[i + half]
                            base[i] = a * cr[i] - b * sr[i]
                            base[i + half] = b * cr[i] + a * sr[i]
                        }
                    }
                }
            }
        }
    }

    /// Fused (see `fusedAttention`) where it applies; else per head and block of up to 128
    /// queries: scores = Q·Kᵀ/√d over the visible keys only (sgemm), a max-subtracted softmax per
    /// row, then out = P·V (sgemm).
    public func causalAttention(
        q: MatrixView, k: MatrixView, v: MatrixView, into out: MatrixView, heads: Int, kvHeads: Int, headDim: Int
    ) throws(SheafError) {
        try Check.owner(self, [q, k, v, out], op: "causalAttention")
        try Check.attention(q, k, v, out, heads: heads, kvHeads: kvHeads, headDim: headDim)
        if vectorKernels && headDim % 16 == 0 {
            fusedAttention(q: q, k: k, v: v, into: out, heads: heads, kvHeads: kvHeads, headDim: headDim)
            return
        }
        let shift = k.rows - q.rows, block = 128
        let scale = 1 / Float(headDim).squareRoot()
        var scores = [Float](repeating: 0, count: block * k.rows)
        let sumsBuffer = UnsafeMutablePointer<Float>.allocate(capacity: block)
        defer { sumsBuffer.deallocate() }
        let pq = floats(q), pk = floats(k), pv = floats(v), po = floats(out)
        for h in 0..<heads {
            let g = h / (heads / kvHeads)
            for t0 in stride(from: 0, to: q.rows, by: block) {
                let rows = min(block, q.rows - t0)
                let keys = t0 + rows + shift  // keys visible to the block's last query
                scores.withUnsafeMutableBufferPointer { s in
                    let sp = s.baseAddress!
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(keys), Int32(headDim), scale,
                        pq + t0 * q.rowStride + h * headDim, Int32(q.rowStride), pk + g * headDim, Int32(k.rowStride),
                        0, sp, Int32(keys))
                    nonisolated(unsafe) let shared = sp
                    if vectorKernels {
                        // Numerators only; each output row is divided by its sum after P·V
                        // (64 columns instead of up to 2048).
                        nonisolated(unsafe) let sums = sumsBuffer
                        forEachRow(rows) { r in
                            let row = shared + r * keys, visible = t0 + r + shift + 1
                            sums[r] = VectorKernels.softmaxNumerators(row, count: visible)
                            for j in visible..<keys { row[j] = 0 }
                        }
                    } else {
                        forEachRow(rows) { r in
                            let row = shared + r * keys, visible = t0 + r + shift + 1
                            var maxScore = -Float.infinity
                            for j in 0..<visible { maxScore = max(maxScore, row[j]) }
                            var total: Float = 0
                            for j in 0..<visible {
                                row[j] = expf(row[j] - maxScore)
                                total += row[j]
                            }
                            let inverse = 1 / total
                            for j in 0..<visible { row[j] *= inverse }
                            for j in visible..<keys { row[j] = 0 }
                        }
                    }
                    let outBlock = po + t0 * out.rowStride + h * headDim
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(headDim), Int32(keys), 1, sp,
                        Int32(keys), pv + g * headDim, Int32(v.rowStride), 0, outBlock, Int32(out.rowStride))
                    if vectorKernels {
                        for r in 0..<rows {
                            VectorKernels.scale(outBlock + r * out.rowStride, count: headDim, by: 1 / sumsBuffer[r])
                        }
                    }
                }
            }
        }
    }

    /// SheafCPUKernels' fused attention: keys packed once per kv head, then (query block, head)
    /// tasks interleaved over the cores, each with its own scores scratch. Adjacent tasks cost the
    /// same (same block, next head), so interleaving balances the causal triangle.
    private func fusedAttention(
        q: MatrixView, k: MatrixView, v: MatrixView, into out: MatrixView, heads: Int, kvHeads: Int, headDim: Int
    ) {
        let shift = k.rows - q.rows, blockRows = 48
        let panelFloats = KeyPanels.count(keys: k.rows, headDim: headDim)
        let panels = UnsafeMutablePointer<Float>.allocate(capacity: kvHeads * panelFloats)
        defer { panels.deallocate() }
        nonisolated(unsafe) let pq = floats(q), pk = floats(k), pv = floats(v), po = floats(out), shared = panels
        let (qs, ks, vs, os) = (q.rowStride, k.rowStride, v.rowStride, out.rowStride)
        forEachRow(kvHeads) { g in
            KeyPanels.pack(pk + g * headDim, rowStride: ks, keys: k.rows, headDim: headDim, into: shared + g * panelFloats)
        }
        let blocks = (q.rows + blockRows - 1) / blockRows, tasks = blocks * heads
        let scale = 1 / Float(headDim).squareRoot(), group = heads / kvHeads
        let workers = min(threads, tasks)
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let scratch = UnsafeMutablePointer<Float>.allocate(
                capacity: AttentionKernel.scratchCount(rows: blockRows, keys: k.rows))
            defer { scratch.deallocate() }
            for task in stride(from: w, to: tasks, by: workers) {
                let (b, h) = task.quotientAndRemainder(dividingBy: heads)
                let t0 = b * blockRows, rows = min(blockRows, q.rows - t0), g = h / group
                AttentionKernel.attend(
                    queries: pq + t0 * qs + h * headDim, qStride: qs, rows: rows, firstPosition: t0 + shift, scale: scale,
                    panels: shared + g * panelFloats, values: pv + g * headDim, vStride: vs, headDim: headDim,
                    out: po + t0 * os + h * headDim, outStride: os, scratch: scratch)
            }
        }
    }

    public func siluMultiply(gate: MatrixView, up: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [gate, up, out], op: "siluMultiply")
        try Check.sameShape([gate, up, out], op: "siluMultiply")
        nonisolated(unsafe) let pg = floats(gate), pu = floats(up), po = floats(out)
        let (gs, us, os, d) = (gate.rowStride, up.rowStride, out.rowStride, gate.cols)
        let vector = vectorKernels
        forEachRow(gate.rows) { r in
            if vector {
                VectorKernels.siluMultiply(gate: pg + r * gs, up: pu + r * us, out: po + r * os, count: d)
                return
            }
            for c in 0..<d {
                let g = pg[r * gs + c]
                po[r * os + c] = g / (1 + expf(-g)) * pu[r * us + c]
            }
        }
    }

    public func add(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, y], op: "add")
        try Check.sameShape([x, y], op: "add")
        nonisolated(unsafe) let px = floats(x), py = floats(y)
        let (xs, ys, d) = (x.rowStride, y.rowStride, x.cols)
        forEachRow(x.rows) { r in
            for c in 0..<d { py[r * ys + c] += px[r * xs + c] }
        }
    }

    public func crossEntropy(logits: MatrixView, targets: DeviceBuffer, into nll: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [logits], [targets, nll], op: "crossEntropy")
        try Check.crossEntropy(logits, targets, nll)
        let pt = ints(targets)
        for r in 0..<logits.rows { try Check.target(pt[r], at: r, vocabulary: logits.cols) }
        nonisolated(unsafe) let pl = floats(logits), pn = host(nll).assumingMemoryBound(to: Float.self), targetsPtr = pt
        let (ls, vocabulary) = (logits.rowStride, logits.cols)
        let vector = vectorKernels
        forEachRow(logits.rows) { r in
            let row = pl + r * ls
            if vector {
                pn[r] = Float(VectorKernels.logSumExp(row, count: vocabulary) - Double(row[Int(targetsPtr[r])]))
                return
            }
            var maxLogit = -Float.infinity
            for c in 0..<vocabulary { maxLogit = max(maxLogit, row[c]) }
            var total = 0.0
            for c in 0..<vocabulary { total += Double(expf(row[c] - maxLogit)) }
            pn[r] = Float(Double(maxLogit) + log(total) - Double(row[Int(targetsPtr[r])]))
        }
    }

    public func klDivergence(reference: MatrixView, logits: MatrixView, into kl: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [reference, logits], [kl], op: "klDivergence")
        try Check.klDivergence(reference, logits, kl)
        nonisolated(unsafe) let pa = floats(reference), pb = floats(logits), pk = host(kl).assumingMemoryBound(to: Float.self)
        let (sa, sb, vocabulary) = (reference.rowStride, logits.rowStride, logits.cols)
        let vector = vectorKernels
        forEachRow(logits.rows) { r in
            let (a, b) = (pa + r * sa, pb + r * sb)
            if vector {
                pk[r] = Float(VectorKernels.klDivergence(a, b, count: vocabulary))
                return
            }
            var (ma, mb) = (-Float.infinity, -Float.infinity)
            for c in 0..<vocabulary { ma = max(ma, a[c]); mb = max(mb, b[c]) }
            var (za, zb, s) = (0.0, 0.0, 0.0)
            for c in 0..<vocabulary {
                let ea = expf(a[c] - ma)
                za += Double(ea)
                zb += Double(expf(b[c] - mb))
                s += Double(ea * (a[c] - b[c]))
            }
            pk[r] = Float(max(0, s / za - Double(ma) + Double(mb) - log(za) + log(zb)))
        }
    }

    // MARK: stored weights

    public func convertToFloat32(_ src: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], op: "convertToFloat32")
        try Check.convertToFloat32(src, out)
        nonisolated(unsafe) let ps = host(src.buffer).assumingMemoryBound(to: UInt16.self) + src.offset, po = floats(out)
        let (ss, os, n, isF16, vector) = (src.rowStride, out.rowStride, out.cols, src.buffer.scalar == .float16, vectorKernels)
        forEachRow(src.rows) { r in
            let from = ps + r * ss, to = po + r * os
            if isF16 && vector {
                convertHalfToFloat(from, to, count: n)
            } else if isF16 {
                for i in 0..<n { to[i] = HalfFloat.f16ToFloat(from[i]) }
            } else {
                for i in 0..<n { to[i] = HalfFloat.bf16ToFloat(from[i]) }
            }
        }
    }

    public func dequantizeRows(
        codes: MatrixView, minima: MatrixView, steps: MatrixView, bits: Int, group: Int, into out: MatrixView, transposed: Bool
    ) throws(SheafError) {
        try Check.owner(self, [codes, minima, steps, out], op: "dequantizeRows")
        try Check.dequantizeRows(codes, minima, steps, bits: bits, group: group, out, transposed: transposed)
        nonisolated(unsafe) let pc = host(codes.buffer).assumingMemoryBound(to: UInt8.self) + codes.offset
        nonisolated(unsafe) let (pm, ps, po) = (floats(minima), floats(steps), floats(out))
        let n = transposed ? out.rows : out.cols, rows = codes.rows
        // Element c of row r goes to po[r·rowStep + c·colStep].
        let (rowStep, colStep) = transposed ? (1, out.rowStride) : (out.rowStride, 1)
        let (cs, ms, ss, mask) = (codes.rowStride, minima.rowStride, steps.rowStride, UInt32((1 << bits) - 1))
        if !transposed && vectorKernels {
            // Rows out in place, by the vectorised expansion (what the product reads as Wᵀ on the cpu).
            let workers = min(threads, rows)
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: n) { codes8 in
                    for r in stride(from: worker, to: rows, by: workers) {
                        expandQuantizedRow(
                            codes: pc + r * cs, n: n, bits: bits, minima: pm + r * ms, steps: ps + r * ss, group: group, into: po + r * rowStep,
                            codes8: codes8.baseAddress!)
                    }
                }
            }
            return
        }
        forEachRow(rows) { r in
            let row = pc + r * cs, to = po + r * rowStep
            for g in 0..<((n + group - 1) / group) {
                let m = pm[r * ms + g], s = ps[r * ss + g]
                for c in (g * group)..<min(n, (g + 1) * group) {
                    let q: UInt32
                    switch bits {
                    case 8: q = UInt32(row[c])
                    case 4: q = UInt32(row[c >> 1] >> UInt8((c & 1) << 2)) & 15
                    default:
                        let bit = c * bits
                        var word = UInt32(row[bit >> 3])
                        if (bit & 7) + bits > 8 { word |= UInt32(row[(bit >> 3) + 1]) << 8 }
                        q = (word >> UInt32(bit & 7)) & mask
                    }
                    // Rounded product, then the sum: the codec's own arithmetic (no FMA).
                    let scaled = Float(q) * s
                    to[c * colStep] = m + scaled
                }
            }
        }
    }

    /// Columns per block of a 16-bit GEMV: its accumulators (2 KB) stay in L1 while every row's
    /// segment streams past.
    static let gemvColumnBlock = 512

    public func gemvStored(_ x: MatrixView, _ w: WeightStorage, into y: MatrixView, accumulate: Bool) throws(SheafError) {
        switch w {
        case .float32(let v):
            try gemm(x, transposeA: false, v, transposeB: false, into: y, alpha: 1, beta: accumulate ? 1 : 0)
            return
        case .half(let v):
            try Check.owner(self, [x, v, y], op: "gemvStored")
        case .quantized(let codes, let minima, let steps, _, _):
            try Check.owner(self, [x, codes, minima, steps, y], op: "gemvStored")
        }
        let (n, m) = try Check.gemvStored(x, w, y)
        nonisolated(unsafe) let (px, py) = (UnsafePointer(floats(x)), floats(y))
        let vector = vectorKernels
        if !accumulate { py.update(repeating: 0, count: m) }
        switch w {
        case .float32: break
        case .half(let v):
            nonisolated(unsafe) let pw = UnsafePointer(host(v.buffer).assumingMemoryBound(to: UInt16.self) + v.offset)
            let (ld, bfloat, block) = (v.rowStride, v.buffer.scalar == .bfloat16, Self.gemvColumnBlock)
            forEachRow((m + block - 1) / block) { b in
                let (j0, count) = (b * block, min(block, m - b * block))
                if vector {
                    gemvHalfColumns(px, n: n, pw + j0, rowStride: ld, bfloat: bfloat, py + j0, count: count)
                } else {
                    for i in 0..<n {
                        let (xi, row) = (px[i], pw + i * ld + j0)
                        for j in 0..<count { py[j0 + j] += xi * (bfloat ? HalfFloat.bf16ToFloat(row[j]) : HalfFloat.f16ToFloat(row[j])) }
                    }
                }
            }
        case .quantized(let codes, let minima, let steps, let bits, let group):
            nonisolated(unsafe) let pc = UnsafePointer(host(codes.buffer).assumingMemoryBound(to: UInt8.self) + codes.offset)
            nonisolated(unsafe) let (pm, ps) = (UnsafePointer(floats(minima)), UnsafePointer(floats(steps)))
            let (cs, ms, ss, workers) = (codes.rowStride, minima.rowStride, steps.rowStride, min(threads, m))
            let mask = UInt32((1 << bits) - 1)
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { row in
                    withUnsafeTemporaryAllocation(of: UInt8.self, capacity: n) { codes8 in
                        // A contiguous block of rows per worker: each streams its own codes.
                        for j in (worker * m / workers)..<((worker + 1) * m / workers) {
                            let (c, mj, sj) = (pc + j * cs, pm + j * ms, ps + j * ss)
                            var dot: Float
                            if vector {
                                dot = quantizedRowDot(
                                    px, n: n, codes: c, bits: bits, minima: mj, steps: sj, group: group, row: row.baseAddress!,
                                    codes8: codes8.baseAddress!)
                            } else {
                                dot = 0
                                for i in 0..<n {
                                    let bit = i * bits
                                    var word = UInt32(c[bit >> 3])
                                    if (bit & 7) + bits > 8 { word |= UInt32(c[(bit >> 3) + 1]) << 8 }
                                    let g = i / group
                                    dot += px[i] * (mj[g] + Float((word >> UInt32(bit & 7)) & mask) * sj[g])
                                }
                            }
                            py[j] += dot
                        }
                    }
                }
            }
        }
    }

    // MARK: clustered layers

    public func gatherColumns(_ src: MatrixView, labels: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], [labels], op: "gatherColumns")
        try Check.gatherColumns(src, labels, out)
        nonisolated(unsafe) let ps = floats(src), po = floats(out), pl = ints(labels)
        for i in 0..<out.cols where pl[i] < 0 || Int(pl[i]) >= src.cols {
            throw .invalidArgument(op: "gatherColumns", detail: "label \(pl[i]) of channel \(i) is outside 0..<\(src.cols)")
        }
        let (ss, os, n) = (src.rowStride, out.rowStride, out.cols)
        forEachRow(src.rows) { r in
            let from = ps + r * ss, to = po + r * os
            for i in 0..<n { to[i] = from[Int(pl[i])] }
        }
    }

    public func sumColumnGroups(_ src: MatrixView, members: DeviceBuffer, starts: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], [members, starts], op: "sumColumnGroups")
        try Check.sumColumnGroups(src, members, starts, out)
        nonisolated(unsafe) let ps = floats(src), po = floats(out), pm = ints(members), pb = ints(starts)
        try Check.columnGroups(members: pm, starts: pb, n: src.cols, k: out.cols)
        let (ss, os, k) = (src.rowStride, out.rowStride, out.cols)
        forEachRow(src.rows) { r in
            let from = ps + r * ss, to = po + r * os
            for c in 0..<k {
                var sum: Float = 0
                for t in Int(pb[c])..<Int(pb[c + 1]) { sum += from[Int(pm[t])] }
                to[c] = sum
            }
        }
    }
}
