import SheafBackend
import SheafCore
import SheafIO

/// An attention projection whose heads may be borrowed from other layers (DirectShare and
/// PostShare, arXiv 2402.11819): {"own": the rows (q, k, v) or columns (o) of the heads this
/// module keeps, in head order} when it keeps any, and `heads`, one `HeadSource` per head (the
/// module's own tensor or the tensor of the layer it borrows from). A borrowed head is stored
/// once, by the module it belongs to, however many modules read it.
public struct HeadSharedKind: StoredLayerKind {
    public static let kindName = "head-shared"
    public let name = HeadSharedKind.kindName
    /// "own" is optional: a module whose every head is borrowed stores nothing of its own.
    public let roles: [String] = []
    public init() {}

    /// The module's heads as (source tensor, its head count, slice), checked against the model.
    struct Layout {
        var type: MatrixType
        var slices: HeadSlices
        /// Per head: the tensor it reads and which head-wide block of it.
        var heads: [CompressedManifest.HeadSource]
        /// Heads (blocks) per source tensor.
        var blocks: [String: Int]
    }

    func layout(_ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext) throws(SheafError) -> Layout {
        let path = context.files.path
        guard let (_, type) = MatrixType.parse(module: module), let slices = type.headSlices(context.files.config) else {
            throw .io(path: path, detail: "module '\(module)' is of kind '\(name)', which only attention projections (q, k, v, o) can be")
        }
        guard let heads = entry.heads, heads.count == slices.count else {
            throw .io(path: path, detail: "module '\(module)' of kind '\(name)' lists \(entry.heads?.count ?? 0) heads, expected \(slices.count)")
        }
        if let role = entry.tensors.keys.first(where: { $0 != "own" }) {
            throw .io(path: path, detail: "module '\(module)' of kind '\(name)' names a '\(role)' tensor; it may name only 'own'")
        }
        var blocks: [String: Int] = [:]
        for name in Set(heads.map(\.tensor)).union(entry.tensors.values).sorted() {
            let s = try context.shape(name)
            // Rows of q/k/v: (blocks·width, dIn); columns of o: (dOut, blocks·width).
            let (along, across) = slices.axis == .rows ? (0, 1) : (1, 0)
            let other = slices.axis == .rows ? shape.dIn : shape.dOut
            guard s.count == 2, s[across] == other, s[along] > 0, s[along] % slices.width == 0 else {
                throw .shapeMismatch(
                    op: "load \(path)",
                    detail: "tensor '\(name)' read by head-shared \(module) has shape \(s), expected whole heads of \(slices.width) "
                        + (slices.axis == .rows ? "rows of width \(other)" : "columns of height \(other)"))
            }
            blocks[name] = s[along] / slices.width
        }
        for (h, source) in heads.enumerated() where !(0..<blocks[source.tensor]!).contains(source.slice) {
            throw .io(path: path, detail: "head \(h) of \(module) reads block \(source.slice) of '\(source.tensor)', which has \(blocks[source.tensor]!)")
        }
        return Layout(type: type, slices: slices, heads: heads, blocks: blocks)
    }

    public func layer(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?, context: StoredLayerContext
    ) throws(SheafError) -> any LinearLayer {
        let backend = try context.requireBackend(module)
        let l = try layout(entry, module: module, shape: shape, context: context)
        let width = l.slices.width
        // Each source tensor is uploaded once, transposed, for every module that reads it: Tᵀ
        // is (dIn, blocks·width) for rows and (blocks·width, dOut) for columns, so a head is a
        // column block (rows) or a row block (columns) of it.
        var transposed: [String: MatrixView] = [:]
        for (name, n) in l.blocks {
            let stored = l.slices.axis == .rows ? (n * width, shape.dIn) : (shape.dOut, n * width)
            transposed[name] = try context.uploaded("head-shared " + name) { () throws(SheafError) in
                try backend.upload(try Matrix(rows: stored.0, cols: stored.1, values: try context.values(name, [stored.0, stored.1])).transposed, label: name)
            }
        }
        // Consecutive heads that read consecutive blocks of one tensor make one product.
        var segments: [HeadSharedLinear.Segment] = []
        for (h, source) in l.heads.enumerated() {
            if let last = segments.last, last.tensor == source.tensor, last.firstHead + last.heads == h, last.firstSlice + last.heads == source.slice {
                segments[segments.count - 1].heads += 1
            } else {
                segments.append(.init(tensor: source.tensor, firstHead: h, firstSlice: source.slice, heads: 1))
            }
        }
        var stored = l.blocks.mapValues { $0 * width * (l.slices.axis == .rows ? shape.dIn : shape.dOut) }
        if bias != nil { stored[module + ".bias"] = shape.dOut }
        return try HeadSharedLinear(
            axis: l.slices.axis, headWidth: width, segments: segments, sources: transposed, inputSize: shape.dIn, outputSize: shape.dOut,
            bias: bias, storedTensors: stored, on: backend, name: module)
    }

    /// W assembled head by head from the blocks the heads read.
    public func denseWeight(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext
    ) throws(SheafError) -> [Float] {
        let l = try layout(entry, module: module, shape: shape, context: context)
        let width = l.slices.width
        var w = [Float](repeating: 0, count: shape.dOut * shape.dIn)
        for (h, source) in l.heads.enumerated() {
            let n = l.blocks[source.tensor]!
            let stored = l.slices.axis == .rows ? [n * width, shape.dIn] : [shape.dOut, n * width]
            let t = try context.host("head-shared " + source.tensor) { () throws(SheafError) in
                try Matrix(rows: stored[0], cols: stored[1], values: try context.values(source.tensor, stored)).asDouble
            }
            for j in 0..<width {
                switch l.slices.axis {
                case .rows:
                    for i in 0..<shape.dIn { w[(h * width + j) * shape.dIn + i] = Float(t[source.slice * width + j, i]) }
                case .columns:
                    for o in 0..<shape.dOut { w[o * shape.dIn + h * width + j] = Float(t[o, source.slice * width + j]) }
                }
            }
        }
        return w
    }
}

/// y = x·Wᵀ (+ b) where W's heads live in other tensors: per run of heads that read consecutive
/// blocks of one source, one GEMM on a strided view of that source's uploaded Tᵀ, never a copy:
/// - rows (q, k, v): y's columns of those heads = x · (column block of Tᵀ);
/// - columns (o): y += (x's columns of those heads) · (row block of Tᵀ).
/// As many products as runs; a module that borrows nothing is one dense GEMM.
public final class HeadSharedLinear: LinearLayer, @unchecked Sendable {
    public struct Segment: Sendable, Equatable {
        var tensor: String
        var firstHead: Int
        var firstSlice: Int
        var heads: Int
    }

    public let inputSize: Int
    public let outputSize: Int
    public let storedTensors: [String: Int]
    let backend: any Backend
    let axis: HeadSlices.Axis
    /// head_dim: the rows (q, k, v) or columns (o) of one head.
    let headWidth: Int
    /// Per segment, the view of its source's Tᵀ it multiplies by.
    let views: [(segment: Segment, weightT: MatrixView)]
    /// The uploaded Tᵀ of each tensor the heads read, by name: the same buffer in every module
    /// that reads the tensor.
    public let sourceBuffers: [String: DeviceBuffer]
    /// GEMMs per forward: one per run of heads that read consecutive blocks of one tensor.
    public var products: Int { views.count }
    let bias: MatrixView?

    init(
        axis: HeadSlices.Axis, headWidth: Int, segments: [Segment], sources: [String: MatrixView], inputSize: Int, outputSize: Int,
        bias: [Float]?, storedTensors: [String: Int], on backend: any Backend, name: String
    ) throws(SheafError) {
        var views: [(Segment, MatrixView)] = []
        for s in segments {
            let t = sources[s.tensor]!, w = s.heads * headWidth
            switch axis {
            case .rows:
                views.append((s, try MatrixView(t.buffer, rows: inputSize, cols: w, rowStride: t.rowStride, offset: t.offset + s.firstSlice * headWidth)))
            case .columns:
                views.append((s, try MatrixView(t.buffer, rows: w, cols: outputSize, rowStride: t.rowStride, offset: t.offset + s.firstSlice * headWidth * t.rowStride)))
            }
        }
        sourceBuffers = sources.mapValues(\.buffer)
        (self.axis, self.views, self.inputSize, self.outputSize, self.storedTensors, self.backend) = (axis, views, inputSize, outputSize, storedTensors, backend)
        self.bias = try bias.map { (b) throws(SheafError) in try MatrixView(backend.upload(b, label: name + " bias"), rows: 1, cols: outputSize) }
        self.headWidth = headWidth
    }

    public func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        let width = headWidth
        for (k, (s, weightT)) in views.enumerated() {
            let w = s.heads * width, first = s.firstHead * width
            switch axis {
            case .rows:
                let out = try MatrixView(y.buffer, rows: y.rows, cols: w, rowStride: y.rowStride, offset: y.offset + first)
                try backend.gemm(x, transposeA: false, weightT, transposeB: false, into: out, alpha: 1, beta: 0)
            case .columns:
                let input = try MatrixView(x.buffer, rows: x.rows, cols: w, rowStride: x.rowStride, offset: x.offset + first)
                try backend.gemm(input, transposeA: false, weightT, transposeB: false, into: y, alpha: 1, beta: k == 0 ? 0 : 1)
            }
        }
        if let bias { try backend.add(try MatrixView(broadcasting: bias, rows: x.rows), into: y) }
    }
}
