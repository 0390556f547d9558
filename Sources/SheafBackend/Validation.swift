import SheafCore

/// Shape and type checks shared by every backend, so all three reject the same inputs with
/// the same message.
enum Check {
    /// Every operand must come from `backend`: its ops cast the storage to their own kind.
    static func owner(_ backend: AnyObject, _ views: [MatrixView], _ buffers: [DeviceBuffer] = [], op: String)
        throws(SheafError)
    {
        for v in views where v.buffer.owner != ObjectIdentifier(backend) {
            throw .invalidArgument(op: op, detail: "operand \(v.shape) belongs to another backend")
        }
        for b in buffers where b.owner != ObjectIdentifier(backend) {
            throw .invalidArgument(op: op, detail: "a buffer of \(b.count) \(b.scalar) belongs to another backend")
        }
    }

    static func scalar(_ v: MatrixView, _ s: ScalarType, _ name: String, op: String) throws(SheafError) {
        guard v.buffer.scalar == s else {
            throw .invalidArgument(op: op, detail: "\(name) must be \(s), is \(v.buffer.scalar)")
        }
    }

    static func nonEmpty(_ v: MatrixView, _ name: String, op: String) throws(SheafError) {
        guard !v.isEmpty else { throw .shapeMismatch(op: op, detail: "\(name) is empty \(v.shape)") }
    }

    /// Sizes handed to kernels and LAPACK are 32-bit.
    static func fitsInt32(_ v: MatrixView, op: String) throws(SheafError) {
        guard v.buffer.count < Int(Int32.max) else {
            throw .invalidArgument(op: op, detail: "buffer of \(v.buffer.count) elements exceeds 2^31")
        }
    }

    /// Returns (m, n, k) of c = op(a)·op(b).
    static func gemm(_ a: MatrixView, _ ta: Bool, _ b: MatrixView, _ tb: Bool, _ c: MatrixView)
        throws(SheafError) -> (m: Int, n: Int, k: Int)
    {
        let op = "gemm"
        for (v, name) in [(a, "a"), (b, "b"), (c, "c")] {
            try scalar(v, .float32, name, op: op)
            try nonEmpty(v, name, op: op)
            try fitsInt32(v, op: op)
        }
        let (m, ka) = ta ? (a.cols, a.rows) : (a.rows, a.cols)
        let (kb, n) = tb ? (b.cols, b.rows) : (b.rows, b.cols)
        guard ka == kb, c.rows == m, c.cols == n else {
            throw .shapeMismatch(
                op: op,
                detail: "op(a) (\(m), \(ka)) · op(b) (\(kb), \(n)) into c \(c.shape)")
        }
        return (m, n, ka)
    }

    static func gram(_ x: MatrixView, _ g: MatrixView) throws(SheafError) {
        let op = "accumulateGram"
        try scalar(x, .float32, "x", op: op)
        try scalar(g, .float64, "gram", op: op)
        try nonEmpty(x, "x", op: op)
        try fitsInt32(x, op: op)
        try fitsInt32(g, op: op)
        guard g.rows == x.cols, g.cols == x.cols else {
            throw .shapeMismatch(op: op, detail: "x \(x.shape) needs gram (\(x.cols), \(x.cols)), got \(g.shape)")
        }
    }

    static func multiplyLower(_ w: MatrixView, _ l: MatrixView, _ out: MatrixView) throws(SheafError) {
        let op = "multiplyLower"
        try scalar(w, .float32, "w", op: op)
        try scalar(l, .float64, "lower", op: op)
        try scalar(out, .float64, "out", op: op)
        for v in [w, l, out] {
            try nonEmpty(v, "operand", op: op)
            try fitsInt32(v, op: op)
        }
        guard l.rows == l.cols, w.cols == l.rows, out.rows == w.rows, out.cols == w.cols else {
            throw .shapeMismatch(op: op, detail: "w \(w.shape) · lower \(l.shape) into \(out.shape)")
        }
    }

    static func solveLower(_ y: MatrixView, _ l: MatrixView) throws(SheafError) {
        let op = "solveLowerRight"
        try scalar(y, .float64, "y", op: op)
        try scalar(l, .float64, "lower", op: op)
        for v in [y, l] {
            try nonEmpty(v, "operand", op: op)
            try fitsInt32(v, op: op)
        }
        guard l.rows == l.cols, y.cols == l.rows else {
            throw .shapeMismatch(op: op, detail: "y \(y.shape) · lower⁻¹ \(l.shape)")
        }
    }

    static func kmeansDistances(_ p: MatrixView, _ c: MatrixView, _ d: MatrixView) throws(SheafError) {
        let op = "kmeansDistances"
        for (v, name) in [(p, "points"), (c, "centroids"), (d, "distances")] {
            try scalar(v, .float32, name, op: op)
            try nonEmpty(v, name, op: op)
            try fitsInt32(v, op: op)
        }
        guard p.cols == c.cols, d.rows == p.rows, d.cols == c.rows else {
            throw .shapeMismatch(op: op, detail: "points \(p.shape), centroids \(c.shape), distances \(d.shape)")
        }
    }

    static func kmeansAssign(_ d: MatrixView, _ labels: DeviceBuffer, _ minima: DeviceBuffer) throws(SheafError) {
        let op = "kmeansAssign"
        try scalar(d, .float32, "distances", op: op)
        try nonEmpty(d, "distances", op: op)
        try fitsInt32(d, op: op)
        guard labels.scalar == .int32, minima.scalar == .float32, labels.count >= d.rows, minima.count >= d.rows
        else {
            throw .shapeMismatch(
                op: op,
                detail: "distances \(d.shape) need int32 labels and float32 minima of \(d.rows), got \(labels.scalar) (\(labels.count)) and \(minima.scalar) (\(minima.count))")
        }
    }

    static func kmeansAccumulate(_ p: MatrixView, _ labels: DeviceBuffer, _ sums: MatrixView, _ counts: DeviceBuffer)
        throws(SheafError)
    {
        let op = "kmeansAccumulate"
        try scalar(p, .float32, "points", op: op)
        try scalar(sums, .float64, "sums", op: op)
        try nonEmpty(p, "points", op: op)
        try nonEmpty(sums, "sums", op: op)
        try fitsInt32(p, op: op)
        try fitsInt32(sums, op: op)
        guard labels.scalar == .int32, labels.count >= p.rows, counts.scalar == .int32,
            counts.count >= sums.rows, sums.cols == p.cols
        else {
            throw .shapeMismatch(
                op: op,
                detail: "points \(p.shape), labels \(labels.scalar) (\(labels.count)), sums \(sums.shape), counts \(counts.scalar) (\(counts.count))")
        }
    }

    /// The clustered layer ops' operands: float32, non-empty, indexable in 32 bits.
    private static func float32Pair(_ src: MatrixView, _ out: MatrixView, op: String) throws(SheafError) {
        for (v, name) in [(src, "src"), (out, "out")] {
            try scalar(v, .float32, name, op: op)
            try nonEmpty(v, name, op: op)
            try fitsInt32(v, op: op)
        }
    }

    static func convertToFloat32(_ src: MatrixView, _ out: MatrixView) throws(SheafError) {
        let op = "convertToFloat32"
        guard src.buffer.scalar.isHalfStorage else {
            throw .invalidArgument(op: op, detail: "src must be float16 or bfloat16, is \(src.buffer.scalar)")
        }
        try scalar(out, .float32, "out", op: op)
        guard src.rows == out.rows, src.cols == out.cols, src.rowStride != 0 else {
            throw .shapeMismatch(op: op, detail: "src \(src.shape), out \(out.shape)")
        }
        for v in [src, out] { try fitsInt32(v, op: op) }
    }

    static func dequantizeRows(
        _ codes: MatrixView, _ minima: MatrixView, _ steps: MatrixView, bits: Int, group: Int, _ out: MatrixView, transposed: Bool
    ) throws(SheafError) {
        let op = "dequantizeRows"
        try scalar(out, .float32, "out", op: op)
        let (rows, n) = transposed ? (out.cols, out.rows) : (out.rows, out.cols)
        try quantized(codes, minima, steps, bits: bits, group: group, rows: rows, n: n, op: op, context: "out \(out.shape)\(transposed ? " transposed" : "")")
        try nonEmpty(out, "out", op: op)
        try fitsInt32(out, op: op)
    }

    /// A quantised T (rows, n): codes uint8 (rows, ≥ ⌈n·bits/8⌉), minima and steps float32 (rows, ⌈n/group⌉).
    static func quantized(
        _ codes: MatrixView, _ minima: MatrixView, _ steps: MatrixView, bits: Int, group: Int, rows: Int, n: Int, op: String, context: String
    ) throws(SheafError) {
        guard codes.buffer.scalar == .uint8 else { throw .invalidArgument(op: op, detail: "codes must be uint8, are \(codes.buffer.scalar)") }
        try scalar(minima, .float32, "minima", op: op)
        try scalar(steps, .float32, "steps", op: op)
        guard (1...8).contains(bits), group >= 1 else { throw .invalidArgument(op: op, detail: "bits \(bits) (1-8), group \(group) (≥ 1)") }
        let groups = (n + group - 1) / group
        guard codes.rows == rows, codes.cols * 8 >= n * bits, minima.rows == rows, minima.cols == groups, steps.rows == rows,
            steps.cols == groups
        else {
            throw .shapeMismatch(
                op: op, detail: "codes \(codes.shape), minima \(minima.shape), steps \(steps.shape), \(context), \(bits) bits, group \(group)")
        }
        for v in [codes, minima, steps] {
            try nonEmpty(v, "operand", op: op)
            try fitsInt32(v, op: op)
        }
    }

    /// The operands of `gemvStored`; returns (n, m).
    @discardableResult
    static func gemvStored(_ x: MatrixView, _ w: WeightStorage, _ y: MatrixView) throws(SheafError) -> (n: Int, m: Int) {
        let op = "gemvStored"
        try scalar(x, .float32, "x", op: op)
        try scalar(y, .float32, "y", op: op)
        let n = x.cols
        switch w {
        case .float32(let v):
            try scalar(v, .float32, "weight", op: op)
            guard v.rows == n, v.cols == y.cols else { throw .shapeMismatch(op: op, detail: "x \(x.shape), weight \(v.shape), y \(y.shape)") }
            try fitsInt32(v, op: op)
        case .half(let v):
            guard v.buffer.scalar.isHalfStorage else { throw .invalidArgument(op: op, detail: "weight must be float16 or bfloat16, is \(v.buffer.scalar)") }
            guard v.rows == n, v.cols == y.cols else { throw .shapeMismatch(op: op, detail: "x \(x.shape), weight \(v.shape), y \(y.shape)") }
            try fitsInt32(v, op: op)
        case .quantized(let codes, let minima, let steps, let bits, let group):
            try quantized(codes, minima, steps, bits: bits, group: group, rows: y.cols, n: n, op: op, context: "x \(x.shape), y \(y.shape)")
        }
        guard x.rows == 1, y.rows == 1, n >= 1, y.cols >= 1 else {
            throw .shapeMismatch(op: op, detail: "x \(x.shape) and y \(y.shape) must be single non-empty rows")
        }
        for v in [x, y] { try fitsInt32(v, op: op) }
        return (n, y.cols)
    }

    static func gatherColumns(_ src: MatrixView, _ labels: DeviceBuffer, _ out: MatrixView) throws(SheafError) {
        let op = "gatherColumns"
        try float32Pair(src, out, op: op)
        guard labels.scalar == .int32, labels.count >= out.cols, src.rows == out.rows else {
            throw .shapeMismatch(op: op, detail: "src \(src.shape), labels \(labels.scalar) (\(labels.count)), out \(out.shape)")
        }
    }

    static func sumColumnGroups(_ src: MatrixView, _ members: DeviceBuffer, _ starts: DeviceBuffer, _ out: MatrixView) throws(SheafError) {
        let op = "sumColumnGroups"
        try float32Pair(src, out, op: op)
        guard members.scalar == .int32, starts.scalar == .int32, members.count >= src.cols, starts.count >= out.cols + 1, src.rows == out.rows
        else {
            throw .shapeMismatch(
                op: op, detail: "src \(src.shape), members \(members.scalar) (\(members.count)), starts \(starts.scalar) (\(starts.count)), out \(out.shape)")
        }
    }

    /// Group boundaries of `sumColumnGroups`: non-decreasing from 0, at most `n`, and members in 0..<n.
    static func columnGroups(members: UnsafePointer<Int32>, starts: UnsafePointer<Int32>, n: Int, k: Int) throws(SheafError) {
        guard starts[0] == 0, Int(starts[k]) <= n else {
            throw .invalidArgument(op: "sumColumnGroups", detail: "starts run from \(starts[0]) to \(starts[k]), expected 0 to at most \(n)")
        }
        for c in 0..<k where starts[c + 1] < starts[c] {
            throw .invalidArgument(op: "sumColumnGroups", detail: "starts[\(c + 1)] = \(starts[c + 1]) < starts[\(c)] = \(starts[c])")
        }
        for t in 0..<Int(starts[k]) where members[t] < 0 || Int(members[t]) >= n {
            throw .invalidArgument(op: "sumColumnGroups", detail: "member \(members[t]) at \(t) is outside 0..<\(n)")
        }
    }

    static func label(_ l: Int32, at i: Int, k: Int) throws(SheafError) {
        guard l >= 0, Int(l) < k else {
            throw .invalidArgument(op: "kmeansAccumulate", detail: "label \(l) of point \(i) is outside 0..<\(k)")
        }
    }

    /// Same-shape float32 operands, non-empty.
    static func sameShape(_ views: [MatrixView], op: String) throws(SheafError) {
        for v in views {
            try scalar(v, .float32, "operand", op: op)
            try nonEmpty(v, "operand", op: op)
            try fitsInt32(v, op: op)
        }
        for v in views.dropFirst() where v.rows != views[0].rows || v.cols != views[0].cols {
            throw .shapeMismatch(op: op, detail: "operands \(views.map(\.shape).joined(separator: ", ")) differ")
        }
    }

    static func rmsNorm(_ x: MatrixView, _ w: MatrixView, _ out: MatrixView, eps: Float) throws(SheafError) {
        try sameShape([x, out], op: "rmsNorm")
        try scalar(w, .float32, "weight", op: "rmsNorm")
        guard w.rows == 1, w.cols == x.cols else {
            throw .shapeMismatch(op: "rmsNorm", detail: "x \(x.shape) needs weight (1, \(x.cols)), got \(w.shape)")
        }
        guard eps > 0, eps.isFinite else { throw .invalidArgument(op: "rmsNorm", detail: "eps must be positive, got \(eps)") }
    }

    static func rope(_ x: MatrixView, headDim: Int, positionOffset: Int, theta: Double) throws(SheafError) {
        try sameShape([x], op: "rope")
        guard headDim > 0, headDim % 2 == 0, x.cols % headDim == 0, positionOffset >= 0, theta > 0 else {
            throw .invalidArgument(
                op: "rope", detail: "x \(x.shape), headDim \(headDim) (even, dividing the columns), offset \(positionOffset), theta \(theta)")
        }
    }

    static func attention(_ q: MatrixView, _ k: MatrixView, _ v: MatrixView, _ out: MatrixView, heads: Int, kvHeads: Int, headDim: Int)
        throws(SheafError)
    {
        let op = "causalAttention"
        try sameShape([q, out], op: op)
        try sameShape([k, v], op: op)
        guard heads > 0, kvHeads > 0, headDim > 0, heads % kvHeads == 0, q.cols == heads * headDim,
            k.cols == kvHeads * headDim, k.rows >= q.rows
        else {
            throw .shapeMismatch(
                op: op,
                detail: "q \(q.shape), k \(k.shape), v \(v.shape) with \(heads) heads, \(kvHeads) key-value heads of \(headDim)")
        }
    }

    static func crossEntropy(_ logits: MatrixView, _ targets: DeviceBuffer, _ nll: DeviceBuffer) throws(SheafError) {
        try sameShape([logits], op: "crossEntropy")
        guard targets.scalar == .int32, targets.count >= logits.rows, nll.scalar == .float32, nll.count >= logits.rows else {
            throw .shapeMismatch(
                op: "crossEntropy",
                detail: "logits \(logits.shape) need int32 targets and float32 nll of \(logits.rows)")
        }
    }

    static func klDivergence(_ reference: MatrixView, _ logits: MatrixView, _ kl: DeviceBuffer) throws(SheafError) {
        try sameShape([reference, logits], op: "klDivergence")
        guard kl.scalar == .float32, kl.count >= logits.rows else {
            throw .shapeMismatch(op: "klDivergence", detail: "logits \(logits.shape) need a float32 kl of \(logits.rows)")
        }
    }

    static func target(_ t: Int32, at r: Int, vocabulary: Int) throws(SheafError) {
        guard t >= 0, Int(t) < vocabulary else {
            throw .invalidArgument(op: "crossEntropy", detail: "target \(t) of row \(r) is outside the vocabulary 0..<\(vocabulary)")
        }
    }
}
