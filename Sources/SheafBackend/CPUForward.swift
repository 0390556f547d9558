import COpenBLAS
import Foundation
import SheafCore

/// The forward-pass ops on the CPU: attention through sgemm in query blocks (skipping the
/// masked upper triangle), element-wise loops split over the cores.
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
        let d = x.cols, xs = x.rowStride, os = out.rowStride
        forEachRow(x.rows) { r in
            let xr = px + r * xs, orow = po + r * os
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
        // Inverse frequencies in Float64, then cos/sin per position: rounded once to float32.
        let inverse = (0..<half).map { pow(theta, -2 * Double($0) / Double(headDim)) }
        nonisolated(unsafe) let p = floats(x)
        let stride = x.rowStride, heads = x.cols / headDim
        forEachRow(x.rows) { t in
            let position = Double(positionOffset + t)
            var cosines = [Float](repeating: 0, count: half), sines = cosines
            for i in 0..<half {
                cosines[i] = Float(cos(position * inverse[i]))
                sines[i] = Float(sin(position * inverse[i]))
            }
            for head in 0..<heads {
                let base = p + t * stride + head * headDim
                for i in 0..<half {
                    let a = base[i], b = base[i + half]
                    base[i] = a * cosines[i] - b * sines[i]
                    base[i + half] = b * cosines[i] + a * sines[i]
                }
            }
        }
    }

    /// Per head and block of up to 128 queries: scores = Q·Kᵀ/√d over the visible keys only
    /// (sgemm), a max-subtracted softmax per row, then out = P·V (sgemm).
    public func causalAttention(
        q: MatrixView, k: MatrixView, v: MatrixView, into out: MatrixView, heads: Int, kvHeads: Int, headDim: Int
    ) throws(SheafError) {
        try Check.owner(self, [q, k, v, out], op: "causalAttention")
        try Check.attention(q, k, v, out, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let shift = k.rows - q.rows, block = 128
        let scale = 1 / Float(headDim).squareRoot()
        var scores = [Float](repeating: 0, count: block * k.rows)
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
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(headDim), Int32(keys), 1, sp,
                        Int32(keys), pv + g * headDim, Int32(v.rowStride), 0, po + t0 * out.rowStride + h * headDim,
                        Int32(out.rowStride))
                }
            }
        }
    }

    public func siluMultiply(gate: MatrixView, up: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [gate, up, out], op: "siluMultiply")
        try Check.sameShape([gate, up, out], op: "siluMultiply")
        nonisolated(unsafe) let pg = floats(gate), pu = floats(up), po = floats(out)
        let (gs, us, os, d) = (gate.rowStride, up.rowStride, out.rowStride, gate.cols)
        forEachRow(gate.rows) { r in
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
        forEachRow(logits.rows) { r in
            let row = pl + r * ls
            var maxLogit = -Float.infinity
            for c in 0..<vocabulary { maxLogit = max(maxLogit, row[c]) }
            var total = 0.0
            for c in 0..<vocabulary { total += Double(expf(row[c] - maxLogit)) }
            pn[r] = Float(Double(maxLogit) + log(total) - Double(row[Int(targetsPtr[r])]))
        }
    }
}
