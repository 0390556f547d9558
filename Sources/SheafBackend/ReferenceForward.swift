import Foundation
import SheafCore

/// The forward-pass ops of the reference backend: textbook loops in Float64.
extension ReferenceBackend {
    public func rmsNorm(_ x: MatrixView, weight: MatrixView, eps: Float, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, weight, out], op: "rmsNorm")
        try Check.rmsNorm(x, weight, out, eps: eps)
        let px = floats(x), pw = floats(weight), po = floats(out)
        for r in 0..<x.rows {
            var sumSquares = 0.0
            for c in 0..<x.cols { sumSquares += Double(px[r * x.rowStride + c]) * Double(px[r * x.rowStride + c]) }
            let scale = 1 / (sumSquares / Double(x.cols) + Double(eps)).squareRoot()
            for c in 0..<x.cols { po[r * out.rowStride + c] = Float(Double(px[r * x.rowStride + c]) * scale * Double(pw[c])) }
        }
    }

    public func rope(_ x: MatrixView, headDim: Int, positionOffset: Int, theta: Double) throws(SheafError) {
        try Check.owner(self, [x], op: "rope")
        try Check.rope(x, headDim: headDim, positionOffset: positionOffset, theta: theta)
        let p = floats(x), half = headDim / 2
        for t in 0..<x.rows {
            let position = Double(positionOffset + t)
            for head in 0..<(x.cols / headDim) {
                let base = p + t * x.rowStride + head * headDim
                for i in 0..<half {
                    let angle = position * pow(theta, -2 * Double(i) / Double(headDim))
                    let a = Double(base[i]), b = Double(base[i + half])
                    base[i] = Float(a * cos(angle) - b * sin(angle))
                    base[i + half] = Float(b * cos(angle) + a * sin(angle))
                }
            }
        }
    }

    public func causalAttention(
        q: MatrixView, k: MatrixView, v: MatrixView, into out: MatrixView, heads: Int, kvHeads: Int, headDim: Int
    ) throws(SheafError) {
        try Check.owner(self, [q, k, v, out], op: "causalAttention")
        try Check.attention(q, k, v, out, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let pq = floats(q), pk = floats(k), pv = floats(v), po = floats(out)
        let shift = k.rows - q.rows, scale = 1 / Double(headDim).squareRoot()
        var scores = [Double](repeating: 0, count: k.rows)
        for h in 0..<heads {
            let g = h / (heads / kvHeads)
            for t in 0..<q.rows {
                let visible = t + shift + 1
                var maxScore = -Double.infinity
                for j in 0..<visible {
                    var dot = 0.0
                    for i in 0..<headDim {
                        dot += Double(pq[t * q.rowStride + h * headDim + i]) * Double(pk[j * k.rowStride + g * headDim + i])
                    }
                    scores[j] = dot * scale
                    maxScore = max(maxScore, scores[j])
                }
                var total = 0.0
                for j in 0..<visible {
                    scores[j] = exp(scores[j] - maxScore)
                    total += scores[j]
                }
                for i in 0..<headDim {
                    var sum = 0.0
                    for j in 0..<visible { sum += scores[j] * Double(pv[j * v.rowStride + g * headDim + i]) }
                    po[t * out.rowStride + h * headDim + i] = Float(sum / total)
                }
            }
        }
    }

    public func siluMultiply(gate: MatrixView, up: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [gate, up, out], op: "siluMultiply")
        try Check.sameShape([gate, up, out], op: "siluMultiply")
        let pg = floats(gate), pu = floats(up), po = floats(out)
        for r in 0..<gate.rows {
            for c in 0..<gate.cols {
                let g = Double(pg[r * gate.rowStride + c])
                po[r * out.rowStride + c] = Float(g / (1 + exp(-g)) * Double(pu[r * up.rowStride + c]))
            }
        }
    }

    public func add(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, y], op: "add")
        try Check.sameShape([x, y], op: "add")
        let px = floats(x), py = floats(y)
        for r in 0..<x.rows {
            for c in 0..<x.cols { py[r * y.rowStride + c] = Float(Double(py[r * y.rowStride + c]) + Double(px[r * x.rowStride + c])) }
        }
    }

    public func crossEntropy(logits: MatrixView, targets: DeviceBuffer, into nll: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [logits], [targets, nll], op: "crossEntropy")
        try Check.crossEntropy(logits, targets, nll)
        let pl = floats(logits), pt = ints(targets), pn = host(nll).assumingMemoryBound(to: Float.self)
        for r in 0..<logits.rows {
            try Check.target(pt[r], at: r, vocabulary: logits.cols)
            let row = pl + r * logits.rowStride
            var maxLogit = -Double.infinity
            for c in 0..<logits.cols { maxLogit = max(maxLogit, Double(row[c])) }
            var total = 0.0
            for c in 0..<logits.cols { total += exp(Double(row[c]) - maxLogit) }
            pn[r] = Float(maxLogit + log(total) - Double(row[Int(pt[r])]))
        }
    }

    public func klDivergence(reference: MatrixView, logits: MatrixView, into kl: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [reference, logits], [kl], op: "klDivergence")
        try Check.klDivergence(reference, logits, kl)
        let pa = floats(reference), pb = floats(logits), pk = host(kl).assumingMemoryBound(to: Float.self)
        for r in 0..<logits.rows {
            let a = (0..<logits.cols).map { Double(pa[r * reference.rowStride + $0]) }
            let b = (0..<logits.cols).map { Double(pb[r * logits.rowStride + $0]) }
            let (ma, mb) = (a.max()!, b.max()!)
            let logZa = log(a.reduce(0.0) { $0 + exp($1 - ma) }) + ma, logZb = log(b.reduce(0.0) { $0 + exp($1 - mb) }) + mb
            // Σ p·(log p − log q) term by term: the definition, not the shortcut the others take.
            var kl = 0.0
            for c in 0..<a.count { kl += exp(a[c] - logZa) * ((a[c] - logZa) - (b[c] - logZb)) }
            pk[r] = Float(max(0, kl))
        }
    }

    /// The bit-level definition of each format, element by element.
    public func convertToFloat32(_ src: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], op: "convertToFloat32")
        try Check.convertToFloat32(src, out)
        let ps = host(src.buffer).assumingMemoryBound(to: UInt16.self), po = floats(out)
        for r in 0..<src.rows {
            for c in 0..<src.cols {
                let bits = ps[src.offset + r * src.rowStride + c]
                po[r * out.rowStride + c] = src.buffer.scalar == .bfloat16 ? Float(bitPattern: UInt32(bits) << 16) : Self.binary16(bits)
            }
        }
    }

    /// IEEE binary16 from its fields: (−1)^s · 2^(e−15) · (1 + m/1024), subnormals 2^−14 · m/1024.
    static func binary16(_ bits: UInt16) -> Float {
        let sign: Double = bits & 0x8000 != 0 ? -1 : 1
        let e = Int((bits >> 10) & 0x1F), m = Double(bits & 0x3FF)
        switch e {
        case 0: return Float(sign * 0x1p-14 * m / 1024)
        case 31: return m == 0 ? Float(sign) * .infinity : .nan
        default: return Float(sign * pow(2, Double(e - 15)) * (1 + m / 1024))
        }
    }

    /// Every weight expanded as `dequantizeRows` / `convertToFloat32` expand it, summed in Float64.
    public func gemvStored(_ x: MatrixView, _ w: WeightStorage, into y: MatrixView, accumulate: Bool) throws(SheafError) {
        let n = x.cols, m = y.cols
        var weight = [Double](repeating: 0, count: n * m)  // W (n, m)
        switch w {
        case .float32(let v):
            try Check.owner(self, [x, v, y], op: "gemvStored")
            try Check.gemvStored(x, w, y)
            let pv = floats(v)
            for i in 0..<n { for j in 0..<m { weight[i * m + j] = Double(pv[i * v.rowStride + j]) } }
        case .half(let v):
            try Check.owner(self, [x, v, y], op: "gemvStored")
            try Check.gemvStored(x, w, y)
            let out = try makeBuffer(.float32, count: n * m)
            try convertToFloat32(v, into: try MatrixView(out, rows: n, cols: m))
            let po = floats(try MatrixView(out, rows: n, cols: m))
            for i in 0..<(n * m) { weight[i] = Double(po[i]) }
        case .quantized(let codes, let minima, let steps, let bits, let group):
            try Check.owner(self, [x, codes, minima, steps, y], op: "gemvStored")
            try Check.gemvStored(x, w, y)
            let out = try makeBuffer(.float32, count: n * m)
            try dequantizeRows(
                codes: codes, minima: minima, steps: steps, bits: bits, group: group, into: try MatrixView(out, rows: n, cols: m), transposed: true)
            let po = floats(try MatrixView(out, rows: n, cols: m))
            for i in 0..<(n * m) { weight[i] = Double(po[i]) }
        }
        let px = floats(x), py = floats(y)
        for j in 0..<m {
            var sum = accumulate ? Double(py[j]) : 0
            for i in 0..<n { sum += Double(px[i]) * weight[i * m + j] }
            py[j] = Float(sum)
        }
    }

    /// The codec read bit by bit, one element at a time.
    public func dequantizeRows(
        codes: MatrixView, minima: MatrixView, steps: MatrixView, bits: Int, group: Int, into out: MatrixView, transposed: Bool
    ) throws(SheafError) {
        try Check.owner(self, [codes, minima, steps, out], op: "dequantizeRows")
        try Check.dequantizeRows(codes, minima, steps, bits: bits, group: group, out, transposed: transposed)
        let pc = host(codes.buffer).assumingMemoryBound(to: UInt8.self), pm = floats(minima), ps = floats(steps), po = floats(out)
        let n = transposed ? out.rows : out.cols
        for r in 0..<codes.rows {
            for c in 0..<n {
                var q = 0
                for b in 0..<bits {
                    let bit = c * bits + b
                    q |= Int((pc[codes.offset + r * codes.rowStride + bit / 8] >> UInt8(bit % 8)) & 1) << b
                }
                let g = c / group
                let scaled = Float(q) * ps[r * steps.rowStride + g]
                po[transposed ? c * out.rowStride + r : r * out.rowStride + c] = pm[r * minima.rowStride + g] + scaled
            }
        }
    }

    public func gatherColumns(_ src: MatrixView, labels: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], [labels], op: "gatherColumns")
        try Check.gatherColumns(src, labels, out)
        let ps = floats(src), po = floats(out), pl = ints(labels)
        for i in 0..<out.cols {
            guard pl[i] >= 0, Int(pl[i]) < src.cols else {
                throw .invalidArgument(op: "gatherColumns", detail: "label \(pl[i]) of channel \(i) is outside 0..<\(src.cols)")
            }
            for r in 0..<src.rows { po[r * out.rowStride + i] = ps[r * src.rowStride + Int(pl[i])] }
        }
    }

    /// Summed in Float64, rounded once.
    public func sumColumnGroups(_ src: MatrixView, members: DeviceBuffer, starts: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], [members, starts], op: "sumColumnGroups")
        try Check.sumColumnGroups(src, members, starts, out)
        let ps = floats(src), po = floats(out), pm = ints(members), pb = ints(starts)
        try Check.columnGroups(members: pm, starts: pb, n: src.cols, k: out.cols)
        for r in 0..<src.rows {
            for c in 0..<out.cols {
                var sum = 0.0
                for t in Int(pb[c])..<Int(pb[c + 1]) { sum += Double(ps[r * src.rowStride + Int(pm[t])]) }
                po[r * out.rowStride + c] = Float(sum)
            }
        }
    }
}
