import COpenCL
import Foundation
import SheafCore

/// The forward-pass ops on OpenCL (kernels/forward.cl). Attention reuses the tiled GEMM:
/// per head and block of queries, scores = Q·Kᵀ/√d over the visible keys, a causal softmax
/// kernel, then P·V.
extension OpenCLBackend {
    /// Work-items per row of the row-reduction kernels (RW in kernels/forward.cl).
    static let rowWorkItems = 64

    private var rowGroup: [Int] { [Self.rowWorkItems, 1] }

    public func rmsNorm(_ x: MatrixView, weight: MatrixView, eps: Float, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, weight, out], op: "rmsNorm")
        try Check.rmsNorm(x, weight, out, eps: eps)
        try runtime.launch(
            "rms_norm", in: "forward", tunables, global: [Self.rowWorkItems, x.rows], local: rowGroup,
            [.int(x.cols), .buffer(x.buffer), .int(x.offset), .int(x.rowStride), .buffer(weight.buffer),
             .int(weight.offset), .float(eps), .buffer(out.buffer), .int(out.offset), .int(out.rowStride)])
    }

    public func rope(_ x: MatrixView, headDim: Int, positionOffset: Int, theta: Double) throws(SheafError) {
        try Check.owner(self, [x], op: "rope")
        try Check.rope(x, headDim: headDim, positionOffset: positionOffset, theta: theta)
        let inverse = try upload((0..<(headDim / 2)).map { pow(theta, -2 * Double($0) / Double(headDim)) })
        // No wait: OpenCL keeps a released buffer until the commands using it have finished.
        try runtime.launch(
            "rope", in: "forward", tunables, global: [headDim / 2, x.cols / headDim, x.rows], local: nil,
            [.int(x.cols / headDim), .int(headDim), .buffer(x.buffer), .int(x.offset), .int(x.rowStride),
             .int(positionOffset), .buffer(inverse)])
    }

    public func causalAttention(
        q: MatrixView, k: MatrixView, v: MatrixView, into out: MatrixView, heads: Int, kvHeads: Int, headDim: Int
    ) throws(SheafError) {
        try Check.owner(self, [q, k, v, out], op: "causalAttention")
        try Check.attention(q, k, v, out, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let shift = k.rows - q.rows, block = 256
        let scale = 1 / Float(headDim).squareRoot()
        let scores = try makeBuffer(.float32, count: min(block, q.rows) * k.rows)
        for h in 0..<heads {
            let g = h / (heads / kvHeads)
            let kHead = try MatrixView(k.buffer, rows: k.rows, cols: headDim, rowStride: k.rowStride, offset: k.offset + g * headDim)
            let vHead = try MatrixView(v.buffer, rows: v.rows, cols: headDim, rowStride: v.rowStride, offset: v.offset + g * headDim)
            for t0 in stride(from: 0, to: q.rows, by: block) {
                let rows = min(block, q.rows - t0), keys = t0 + rows + shift
                let qBlock = try MatrixView(
                    q.buffer, rows: rows, cols: headDim, rowStride: q.rowStride, offset: q.offset + t0 * q.rowStride + h * headDim)
                let sBlock = try MatrixView(scores, rows: rows, cols: keys)
                let kVisible = try MatrixView(k.buffer, rows: keys, cols: headDim, rowStride: kHead.rowStride, offset: kHead.offset)
                let vVisible = try MatrixView(v.buffer, rows: keys, cols: headDim, rowStride: vHead.rowStride, offset: vHead.offset)
                try gemm(qBlock, transposeA: false, kVisible, transposeB: true, into: sBlock, alpha: scale, beta: 0)
                try runtime.launch(
                    "causal_softmax", in: "forward", tunables, global: [Self.rowWorkItems, rows], local: rowGroup,
                    [.int(keys), .int(t0 + shift), .buffer(scores), .int(0), .int(keys)])
                let oBlock = try MatrixView(
                    out.buffer, rows: rows, cols: headDim, rowStride: out.rowStride, offset: out.offset + t0 * out.rowStride + h * headDim)
                try gemm(sBlock, transposeA: false, vVisible, transposeB: false, into: oBlock, alpha: 1, beta: 0)
            }
        }
    }

    public func siluMultiply(gate: MatrixView, up: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [gate, up, out], op: "siluMultiply")
        try Check.sameShape([gate, up, out], op: "siluMultiply")
        try runtime.launch(
            "silu_mul", in: "forward", tunables, global: [gate.cols, gate.rows], local: nil,
            [.int(gate.rows), .int(gate.cols), .buffer(gate.buffer), .int(gate.offset), .int(gate.rowStride),
             .buffer(up.buffer), .int(up.offset), .int(up.rowStride),
             .buffer(out.buffer), .int(out.offset), .int(out.rowStride)])
    }

    public func add(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, y], op: "add")
        try Check.sameShape([x, y], op: "add")
        try runtime.launch(
            "add_inplace", in: "forward", tunables, global: [x.cols, x.rows], local: nil,
            [.int(x.rows), .int(x.cols), .buffer(x.buffer), .int(x.offset), .int(x.rowStride),
             .buffer(y.buffer), .int(y.offset), .int(y.rowStride)])
    }

    public func crossEntropy(logits: MatrixView, targets: DeviceBuffer, into nll: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [logits], [targets, nll], op: "crossEntropy")
        try Check.crossEntropy(logits, targets, nll)
        let t: [Int32] = try download(targets)
        for r in 0..<logits.rows { try Check.target(t[r], at: r, vocabulary: logits.cols) }
        try runtime.launch(
            "cross_entropy", in: "forward", tunables, global: [Self.rowWorkItems, logits.rows], local: rowGroup,
            [.int(logits.cols), .buffer(logits.buffer), .int(logits.offset), .int(logits.rowStride),
             .buffer(targets), .buffer(nll)])
    }

    public func klDivergence(reference: MatrixView, logits: MatrixView, into kl: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [reference, logits], [kl], op: "klDivergence")
        try Check.klDivergence(reference, logits, kl)
        try runtime.launch(
            "kl_divergence", in: "forward", tunables, global: [Self.rowWorkItems, logits.rows], local: rowGroup,
            [.int(logits.cols), .buffer(reference.buffer), .int(reference.offset), .int(reference.rowStride),
             .buffer(logits.buffer), .int(logits.offset), .int(logits.rowStride), .buffer(kl)])
    }

    // MARK: stored weights

    public func convertToFloat32(_ src: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], op: "convertToFloat32")
        try Check.convertToFloat32(src, out)
        try runtime.launch(
            src.buffer.scalar == .float16 ? "half_to_float" : "bfloat16_to_float", in: "forward", tunables,
            global: [out.cols, out.rows], local: nil,
            [.int(out.rows), .int(out.cols), .buffer(src.buffer), .int(src.offset), .int(src.rowStride),
             .buffer(out.buffer), .int(out.offset), .int(out.rowStride)])
    }

    public func dequantizeRows(
        codes: MatrixView, minima: MatrixView, steps: MatrixView, bits: Int, group: Int, into out: MatrixView, transposed: Bool
    ) throws(SheafError) {
        try Check.owner(self, [codes, minima, steps, out], op: "dequantizeRows")
        try Check.dequantizeRows(codes, minima, steps, bits: bits, group: group, out, transposed: transposed)
        let n = transposed ? out.rows : out.cols
        try runtime.launch(
            "dequantize_rows", in: "forward", tunables, global: transposed ? [codes.rows, n] : [n, codes.rows], local: nil,
            [.int(codes.rows), .int(n), .int(bits), .int(group), .int(transposed ? 1 : 0),
             .buffer(codes.buffer), .int(codes.offset), .int(codes.rowStride),
             .buffer(minima.buffer), .int(minima.offset), .int(minima.rowStride),
             .buffer(steps.buffer), .int(steps.offset), .int(steps.rowStride),
             .buffer(out.buffer), .int(out.offset), .int(out.rowStride)])
    }

    public func gemvStored(_ x: MatrixView, _ w: WeightStorage, into y: MatrixView, accumulate: Bool) throws(SheafError) {
        switch w {
        case .float32(let v):
            try gemm(x, transposeA: false, v, transposeB: false, into: y, alpha: 1, beta: accumulate ? 1 : 0)
        case .half(let v):
            try Check.owner(self, [x, v, y], op: "gemvStored")
            let (n, m) = try Check.gemvStored(x, w, y)
            try runtime.launch(
                v.buffer.scalar == .float16 ? "gemv_half" : "gemv_bfloat16", in: "forward", tunables, global: [m], local: nil,
                [.int(n), .int(m), .int(accumulate ? 1 : 0), .buffer(x.buffer), .int(x.offset), .buffer(v.buffer), .int(v.offset),
                 .int(v.rowStride), .buffer(y.buffer), .int(y.offset)])
        case .quantized(let codes, let minima, let steps, let bits, let group):
            try Check.owner(self, [x, codes, minima, steps, y], op: "gemvStored")
            let (n, m) = try Check.gemvStored(x, w, y)
            try runtime.launch(
                "gemv_quantized", in: "forward", tunables, global: [m], local: nil,
                [.int(n), .int(m), .int(bits), .int(group), .int(accumulate ? 1 : 0), .buffer(x.buffer), .int(x.offset),
                 .buffer(codes.buffer), .int(codes.offset), .int(codes.rowStride),
                 .buffer(minima.buffer), .int(minima.offset), .int(minima.rowStride),
                 .buffer(steps.buffer), .int(steps.offset), .int(steps.rowStride), .buffer(y.buffer), .int(y.offset)])
        }
    }

    // MARK: clustered layers

    public func gatherColumns(_ src: MatrixView, labels: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], [labels], op: "gatherColumns")
        try Check.gatherColumns(src, labels, out)
        try runtime.launch(
            "gather_columns", in: "forward", tunables, global: [out.cols, out.rows], local: nil,
            [.int(out.rows), .int(out.cols), .int(src.cols), .buffer(src.buffer), .int(src.offset), .int(src.rowStride),
             .buffer(labels), .buffer(out.buffer), .int(out.offset), .int(out.rowStride)])
    }

    public func sumColumnGroups(_ src: MatrixView, members: DeviceBuffer, starts: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [src, out], [members, starts], op: "sumColumnGroups")
        try Check.sumColumnGroups(src, members, starts, out)
        try runtime.launch(
            "sum_column_groups", in: "forward", tunables, global: [out.cols, out.rows], local: nil,
            [.int(out.rows), .int(out.cols), .int(src.cols), .buffer(src.buffer), .int(src.offset), .int(src.rowStride),
             .buffer(members), .buffer(starts), .buffer(out.buffer), .int(out.offset), .int(out.rowStride)])
    }
}
