import SheafBackend
import SheafCore

/// y = x·Wᵀ (+ b) for a batch of rows x (rows, inputSize) → y (rows, outputSize), in whatever
/// factored form the weights take. The forward pass knows only this protocol; the compression
/// methods add low-rank, shared-basis, clustered and head-shared variants.
public protocol LinearLayer: AnyObject, Sendable {
    var inputSize: Int { get }
    var outputSize: Int { get }
    /// The stored tensors this layer reads, by checkpoint name, with their element counts. A
    /// tensor shared by several layers (a Basis Sharing basis) is listed by each of them: count a
    /// model's parameters over the distinct names (`LinearLayers.storedParameters`).
    var storedTensors: [String: Int] { get }
    /// Writes x·Wᵀ (+ b) into y.
    func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError)
}

/// A dense weight W (outputSize, inputSize), kept on the backend as Wᵀ (inputSize,
/// outputSize) so the product is a plain x·Wᵀ GEMM with no transposed operand, which every
/// backend (and the CPU-driver OpenCL kernels) runs fastest. Wᵀ stays in its stored type
/// (`ResidentMatrix`); a 16-bit or quantised one is expanded a block of at most `convertedElements`
/// columns×rows at a time (the output head: 28M weights, in 8 blocks), so the scratch stays small.
public final class DenseLinear: LinearLayer, @unchecked Sendable {
    public let inputSize: Int
    public let outputSize: Int
    let backend: any Backend
    /// Wᵀ: (inputSize, outputSize).
    public let weightT: ResidentMatrix
    /// (1, outputSize), or nil.
    let bias: MatrixView?
    public let storedTensors: [String: Int]
    /// Most float32 elements a 16-bit or quantised weight is expanded into at once (16 MB).
    static let convertedElements = 4 << 20

    /// `weight`: W as (outputSize, inputSize) row-major values. `name`: the module path; its
    /// tensors are `name.weight` and `name.bias`.
    public convenience init(weight: [Float], outputSize: Int, inputSize: Int, bias: [Float]? = nil, on backend: any Backend, name: String)
        throws(SheafError)
    {
        guard weight.count == outputSize * inputSize else {
            throw .shapeMismatch(op: "DenseLinear", detail: "\(name): \(weight.count) weights for (\(outputSize), \(inputSize))")
        }
        var transposed = [Float](repeating: 0, count: weight.count)
        weight.withUnsafeBufferPointer { w in
            transposed.withUnsafeMutableBufferPointer { t in
                for o in 0..<outputSize { for i in 0..<inputSize { t[i * outputSize + o] = w[o * inputSize + i] } }
            }
        }
        let weightT = try MatrixView(backend.upload(transposed, label: name), rows: inputSize, cols: outputSize)
        try self.init(weightT: ResidentMatrix(weightT), bias: bias, on: backend, name: name)
    }

    init(weightT: ResidentMatrix, bias: [Float]?, on backend: any Backend, name: String) throws(SheafError) {
        let (inputSize, outputSize) = (weightT.rows, weightT.cols)
        guard bias == nil || bias!.count == outputSize else {
            throw .shapeMismatch(op: "DenseLinear", detail: "\(name): \(bias!.count) biases for \(outputSize) outputs")
        }
        self.inputSize = inputSize
        self.outputSize = outputSize
        self.backend = backend
        self.weightT = weightT
        self.bias = try bias.map { (b) throws(SheafError) in try MatrixView(backend.upload(b, label: name + " bias"), rows: 1, cols: outputSize) }
        storedTensors = [name + ".weight": inputSize * outputSize].merging(bias == nil ? [:] : [name + ".bias": outputSize]) { $1 }
    }

    public func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        if x.rows == 1 {
            // A decoded token: read the weight once as stored.
            try backend.gemvStored(x, weightT.storage, into: y, accumulate: false)
        } else if let w = weightT.float32InPlace {
            try backend.gemm(x, transposeA: false, w, transposeB: false, into: y, alpha: 1, beta: 0)
        } else {
            let block = max(1, min(outputSize, Self.convertedElements / max(inputSize, 1)))
            for start in stride(from: 0, to: outputSize, by: block) {
                let columns = start..<min(start + block, outputSize)
                let yBlock = try MatrixView(y.buffer, rows: y.rows, cols: columns.count, rowStride: y.rowStride, offset: y.offset + start)
                let w = try weightT.operand(columns: columns)
                try backend.gemm(x, transposeA: false, w.view, transposeB: w.transposed, into: yBlock, alpha: 1, beta: 0)
            }
        }
        if let bias { try backend.add(try MatrixView(broadcasting: bias, rows: x.rows), into: y) }
    }
}

/// A factored weight Wᵀ ≈ B·C: y = (x·B)·C (+ b), with the basis B (inputSize, rank) possibly
/// shared by the same matrix type of several layers (Basis Sharing) and the coefficients C
/// (rank, outputSize) this layer's own. 2·rank·(inputSize + outputSize) flops per row instead
/// of 2·inputSize·outputSize. B and C stay in their stored type (`ResidentMatrix`).
public final class LowRankLinear: LinearLayer, @unchecked Sendable {
    public let inputSize: Int
    public let outputSize: Int
    public let rank: Int
    let backend: any Backend
    /// B: (inputSize, rank); the same matrix in every layer that shares it.
    public let basis: ResidentMatrix
    /// C: (rank, outputSize).
    public let coefficients: ResidentMatrix
    let bias: MatrixView?
    public let storedTensors: [String: Int]
    /// Holds x·B between the two products; shared by every factored layer of a model.
    let scratch: Scratch

    /// `basis`: B on the backend (inputSize, rank), stored as `basisName`. `coefficientsT`: Cᵀ as
    /// (outputSize, rank) row-major, PyTorch orientation (the second nn.Linear's weight), stored
    /// as `coefficientsName`. `name`: the module path (its bias is `name.bias`).
    public convenience init(
        basis: MatrixView, basisName: String, coefficientsT: [Float], coefficientsName: String, outputSize: Int, bias: [Float]? = nil,
        scratch: Scratch, on backend: any Backend, name: String
    ) throws(SheafError) {
        let rank = basis.cols
        guard coefficientsT.count == outputSize * rank else {
            throw .shapeMismatch(op: "LowRankLinear", detail: "\(name): \(coefficientsT.count) coefficients for (\(outputSize), \(rank))")
        }
        let c = try Matrix(rows: outputSize, cols: rank, values: coefficientsT).transposed
        try self.init(
            basis: ResidentMatrix(basis), basisName: basisName, coefficients: ResidentMatrix(try backend.upload(c, label: name + " coefficients")),
            coefficientsName: coefficientsName, bias: bias, scratch: scratch, on: backend, name: name)
    }

    /// B (inputSize, rank) and C (rank, outputSize) as they stay resident.
    public init(
        basis: ResidentMatrix, basisName: String, coefficients: ResidentMatrix, coefficientsName: String, bias: [Float]? = nil,
        scratch: Scratch, on backend: any Backend, name: String
    ) throws(SheafError) {
        let (inputSize, rank, outputSize) = (basis.rows, basis.cols, coefficients.cols)
        guard coefficients.rows == rank, bias == nil || bias!.count == outputSize else {
            throw .shapeMismatch(op: "LowRankLinear", detail: "\(name): basis (\(inputSize), \(rank)), coefficients (\(coefficients.rows), \(outputSize))")
        }
        self.inputSize = inputSize
        self.outputSize = outputSize
        self.rank = rank
        self.backend = backend
        self.basis = basis
        self.coefficients = coefficients
        self.scratch = scratch
        storedTensors = [basisName: inputSize * rank, coefficientsName: outputSize * rank]
            .merging(bias == nil ? [:] : [name + ".bias": outputSize]) { $1 }
        self.bias = try bias.map { (b) throws(SheafError) in try MatrixView(backend.upload(b, label: name + " bias"), rows: 1, cols: outputSize) }
    }

    public func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        try forward(x, into: y, accumulate: false)
    }

    /// y = (x·B)·C (+ b), or y += that when `accumulate` (a clustered layer's residual term).
    /// A 16-bit C is converted after the first product has read B (an in-order queue on OpenCL),
    /// so both may share one conversion scratch.
    func forward(_ x: MatrixView, into y: MatrixView, accumulate: Bool) throws(SheafError) {
        let t = try scratch.view(rows: x.rows, cols: rank)
        if x.rows == 1 {
            // A decoded token: both factors read once as stored.
            try backend.gemvStored(x, basis.storage, into: t, accumulate: false)
            try backend.gemvStored(t, coefficients.storage, into: y, accumulate: accumulate)
        } else {
            let b = try basis.operand()
            try backend.gemm(x, transposeA: false, b.view, transposeB: b.transposed, into: t, alpha: 1, beta: 0)
            let c = try coefficients.operand()
            try backend.gemm(t, transposeA: false, c.view, transposeB: c.transposed, into: y, alpha: 1, beta: accumulate ? 1 : 0)
        }
        if let bias { try backend.add(try MatrixView(broadcasting: bias, rows: x.rows), into: y) }
    }
}

/// SWSC's clustered weight W ≈ W' + U·V with W' made of k shared channels, computed without
/// forming W' (Zeng et al., 2025):
/// - rows (output channels clustered): W'[o] = centroids[labels[o]], so x·W'ᵀ is the gather of
///   t = x·centroidsᵀ (tokens, k) by label: 2·k·dIn flops per row instead of 2·dOut·dIn.
/// - cols (input channels clustered): W'[:, i] = centroids[labels[i]] (a column of length dOut),
///   so x·W'ᵀ = s·centroids with s (tokens, k) the sums of x's columns per cluster.
/// plus an optional low-rank residual (x·B)·C and the bias.
public final class ClusteredLinear: LinearLayer, @unchecked Sendable {
    public enum Channels: String, Sendable, CaseIterable { case rows, cols }

    public let inputSize: Int
    public let outputSize: Int
    public let channels: Channels
    public let clusters: Int
    let backend: any Backend
    /// rows: centroidsᵀ (dIn, k); cols: centroids (k, dOut).
    let centroids: MatrixView
    /// rows: labels (dOut); cols: the input columns grouped by cluster (dIn) and the groups'
    /// starts (k + 1).
    let labels: DeviceBuffer
    let starts: DeviceBuffer?
    let residual: LowRankLinear?
    let bias: MatrixView?
    public let storedTensors: [String: Int]
    let scratch: Scratch

    /// `centroids`: (k, dIn) for rows, (k, dOut) for cols, row-major as stored. `labels`: one
    /// per channel (dOut for rows, dIn for cols), each in 0..<k (checked). `residual`: the
    /// low-rank term without bias.
    public init(
        channels: Channels, centroids: Matrix<Float>, labels: [Int32], residual: LowRankLinear?, inputSize: Int, outputSize: Int,
        bias: [Float]?, storedTensors: [String: Int], scratch: Scratch, on backend: any Backend, name: String
    ) throws(SheafError) {
        let k = centroids.rows
        let (channelCount, length) = channels == .rows ? (outputSize, inputSize) : (inputSize, outputSize)
        guard k >= 1, centroids.cols == length, labels.count == channelCount, bias == nil || bias!.count == outputSize else {
            throw .shapeMismatch(
                op: "ClusteredLinear", detail: "\(name): centroids \(centroids.shape) and \(labels.count) labels for (\(outputSize), \(inputSize)) \(channels.rawValue)")
        }
        if let bad = labels.firstIndex(where: { $0 < 0 || Int($0) >= k }) {
            throw .invalidArgument(op: "load \(name)", detail: "label \(labels[bad]) of channel \(bad) is outside 0..<\(k)")
        }
        if let r = residual, r.inputSize != inputSize || r.outputSize != outputSize {
            throw .shapeMismatch(op: "ClusteredLinear", detail: "\(name): residual (\(r.outputSize), \(r.inputSize))")
        }
        (self.inputSize, self.outputSize, self.channels, clusters, self.backend) = (inputSize, outputSize, channels, k, backend)
        (self.residual, self.storedTensors, self.scratch) = (residual, storedTensors, scratch)
        switch channels {
        case .rows:
            self.centroids = try backend.upload(centroids.transposed, label: name + " centroids")
            self.labels = try backend.upload(labels, label: name + " labels")
            starts = nil
        case .cols:
            self.centroids = try backend.upload(centroids, label: name + " centroids")
            // A counting sort of the input columns by cluster.
            var first = [Int32](repeating: 0, count: k + 1)
            for l in labels { first[Int(l) + 1] += 1 }
            for c in 0..<k { first[c + 1] += first[c] }
            var next = first, members = [Int32](repeating: 0, count: labels.count)
            for (i, l) in labels.enumerated() {
                members[Int(next[Int(l)])] = Int32(i)
                next[Int(l)] += 1
            }
            self.labels = try backend.upload(members, label: name + " members")
            starts = try backend.upload(first, label: name + " starts")
        }
        self.bias = try bias.map { (b) throws(SheafError) in try MatrixView(backend.upload(b, label: name + " bias"), rows: 1, cols: outputSize) }
    }

    public func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        let t = try scratch.view(rows: x.rows, cols: clusters)
        switch channels {
        case .rows:
            try backend.gemm(x, transposeA: false, centroids, transposeB: false, into: t, alpha: 1, beta: 0)
            try backend.gatherColumns(t, labels: labels, into: y)
        case .cols:
            try backend.sumColumnGroups(x, members: labels, starts: starts!, into: t)
            try backend.gemm(t, transposeA: false, centroids, transposeB: false, into: y, alpha: 1, beta: 0)
        }
        // The residual reuses the scratch: t is consumed (the backend's queue runs in order).
        try residual?.forward(x, into: y, accumulate: true)
        if let bias { try backend.add(try MatrixView(broadcasting: bias, rows: x.rows), into: y) }
    }
}

/// A float32 work buffer on a backend, grown on demand and handed out as a (rows, cols) view.
/// The layers of a model run one at a time (and a backend's queue runs in order), so all the
/// factored layers of a model share one instead of each keeping (tokens, rank) floats.
public final class Scratch: @unchecked Sendable {
    let backend: any Backend
    private var buffer: DeviceBuffer?

    public init(on backend: any Backend) { self.backend = backend }

    func view(rows: Int, cols: Int) throws(SheafError) -> MatrixView {
        if buffer == nil || buffer!.count < rows * cols { buffer = try backend.makeBuffer(.float32, count: rows * cols) }
        return try MatrixView(buffer!, rows: rows, cols: cols)
    }
}

public enum LinearLayers {
    /// Bytes of weights `layer` reads for one token, as held in memory: a stored-form weight at
    /// its own width (a shared basis counted in each layer that reads it); layers kept as float32
    /// (clustered, head-shared) at 4 bytes per stored element.
    public static func residentWeightBytes(_ layer: any LinearLayer) -> Int {
        if let d = layer as? DenseLinear { return d.weightT.residentBytes }
        if let l = layer as? LowRankLinear { return l.basis.residentBytes + l.coefficients.residentBytes }
        return 4 * layer.storedTensors.values.reduce(0, +)
    }

    /// Parameters of `layers`, each distinct stored tensor counted once however many layers use it.
    public static func storedParameters(_ layers: [any LinearLayer]) -> Int {
        var seen: [String: Int] = [:]
        for l in layers { seen.merge(l.storedTensors) { a, _ in a } }
        return seen.values.reduce(0, +)
    }
}
