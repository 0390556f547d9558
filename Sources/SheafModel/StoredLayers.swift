import SheafBackend
import SheafCore
import SheafIO

/// How a compressed linear module is stored in a checkpoint (`CompressedManifest.Module.kind`):
/// which tensors it names, how it becomes a runtime `LinearLayer`, and its dense weight for
/// export. Each kind is one type here plus one line in `StoredLayerKinds.all`; the loader and the
/// export know only this protocol.
public protocol StoredLayerKind: Sendable {
    /// The `kind` in sheaf.json.
    var name: String { get }
    /// The tensor roles a module of this kind must name (e.g. "basis", "coefficients").
    var roles: [String] { get }
    /// The runtime layer for `module` (a module path) of W's `shape`, with the module's bias.
    func layer(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?, context: StoredLayerContext
    ) throws(SheafError) -> any LinearLayer
    /// W (dOut, dIn), row-major Float32, as the runtime layer computes it (for `sheaf export`).
    func denseWeight(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext
    ) throws(SheafError) -> [Float]
}

/// The stored-layer kinds a checkpoint may use, by name.
public enum StoredLayerKinds {
    public static let all: [any StoredLayerKind] = [
        DenseKind(), LowRankKind(), ClusteredKind(channels: .rows), ClusteredKind(channels: .cols), QuantizedKind(), HeadSharedKind(),
    ]

    /// The kind of `entry`, after checking that it names every tensor its kind needs.
    public static func kind(of entry: CompressedManifest.Module, module: String, in path: String) throws(SheafError) -> any StoredLayerKind {
        var found: (any StoredLayerKind)?
        for k in all where k.name == entry.kind { found = k }
        guard let kind = found else {
            throw .io(path: path, detail: "module '\(module)' has kind '\(entry.kind)'; this Sheaf knows \(all.map(\.name).joined(separator: ", "))")
        }
        if let missing = kind.roles.first(where: { entry.tensors[$0] == nil }) {
            throw .io(path: path, detail: "module '\(module)' of kind '\(entry.kind)' names no '\(missing)' tensor")
        }
        // One tensor in two roles of a module (minima and steps, basis and coefficients) is a
        // corrupt manifest, and would be counted twice.
        guard Set(entry.tensors.values).count == entry.tensors.count else {
            throw .io(path: path, detail: "module '\(module)' names one tensor in two roles: \(entry.tensors.sorted { $0.key < $1.key })")
        }
        return kind
    }
}

/// What the modules of one model share while it loads or exports: the files, the backend (nil
/// for an export), each shared tensor uploaded or read once for every module that uses it, and
/// one scratch buffer for the factored layers (they run one at a time).
public final class StoredLayerContext: @unchecked Sendable {
    public let files: ModelFiles
    public let backend: (any Backend)?
    private var uploads: [String: MatrixView] = [:]
    private var hostMatrices: [String: Matrix<Double>] = [:]
    private var sharedScratch: Scratch?
    private var sharedWeightScratch: Scratch?
    private var residentUploads: [String: ResidentMatrix] = [:]

    public init(files: ModelFiles, backend: (any Backend)?) { (self.files, self.backend) = (files, backend) }

    /// A tensor's values, checked against `shape` and for non-finite values (naming the tensor).
    public func values(_ name: String, _ shape: [Int]) throws(SheafError) -> [Float] {
        let info = try files.info(name)
        guard info.shape == shape else {
            throw .shapeMismatch(op: "load \(files.path)", detail: "tensor '\(name)' has shape \(info.shape), expected \(shape)")
        }
        let v = try files.float32(name)
        if let bad = v.firstIndex(where: { !$0.isFinite }) {
            throw .nonFinite(op: "load \(files.path)", what: "tensor '\(name)' at element \(bad) (\(v[bad]))")
        }
        return v
    }

    /// A tensor's stored shape.
    public func shape(_ name: String) throws(SheafError) -> [Int] { try files.info(name).shape }

    /// The backend; loading a runtime layer needs one.
    public func requireBackend(_ module: String) throws(SheafError) -> any Backend {
        guard let backend else { throw .invalidArgument(op: "load \(module)", detail: "no backend to load layers on") }
        return backend
    }

    /// The upload made by `make` under `key`, made once for every module that asks.
    public func uploaded(_ key: String, _ make: () throws(SheafError) -> MatrixView) throws(SheafError) -> MatrixView {
        if let v = uploads[key] { return v }
        let v = try make()
        uploads[key] = v
        return v
    }

    /// The host matrix made by `make` under `key`, made once (an export reads a shared basis once).
    public func host(_ key: String, _ make: () throws(SheafError) -> Matrix<Double>) throws(SheafError) -> Matrix<Double> {
        if let m = hostMatrices[key] { return m }
        let m = try make()
        hostMatrices[key] = m
        return m
    }

    public func scratch() throws(SheafError) -> Scratch {
        if let s = sharedScratch { return s }
        let s = Scratch(on: try requireBackend("scratch"))
        sharedScratch = s
        return s
    }

    /// Where 16-bit weights are converted before a product reads them: one for the model (its
    /// layers run one at a time), apart from `scratch()`, which holds activations meanwhile.
    public func weightScratch() throws(SheafError) -> Scratch {
        if let s = sharedWeightScratch { return s }
        let s = Scratch(on: try requireBackend("weight scratch"))
        sharedWeightScratch = s
        return s
    }

    /// Tensor `name` of `shape` (rows, cols) on the backend in the form the file stores it when
    /// that is F16, BF16 or quantised (quantised only as the transpose, the layout products read;
    /// otherwise, and for other types, float32), as its transpose when `transposed`; shape- and
    /// NaN-checked by name. Made once per `key` for every module that asks (a shared basis).
    public func resident(_ name: String, rows: Int, cols: Int, transposed: Bool, key: String? = nil) throws(SheafError) -> ResidentMatrix {
        if let key, let made = residentUploads[key] { return made }
        let backend = try requireBackend(name)
        let made: ResidentMatrix
        let info = try files.info(name)
        guard info.shape == [rows, cols] else {
            throw .shapeMismatch(op: "load \(files.path)", detail: "tensor '\(name)' has shape \(info.shape), expected \([rows, cols])")
        }
        if transposed, let (layout, codes, minima, steps) = try files.quantized(name) {
            made = try ResidentMatrix(
                quantized: layout, codes: codes, minima: minima, steps: steps, scratch: try weightScratch(), on: backend, label: name)
        } else if let (dtype, bits) = try files.halfBits(name) {
            made = try ResidentMatrix(
                bits: bits, dtype: dtype, rows: rows, cols: cols, transposed: transposed, scratch: try weightScratch(), on: backend, label: name)
        } else {
            var m = try Matrix(rows: rows, cols: cols, values: try values(name, [rows, cols]))
            if transposed { m = m.transposed }
            made = ResidentMatrix(try backend.upload(m, label: name))
        }
        if let key { residentUploads[key] = made }
        return made
    }

    /// A dense layer from W (dOut, dIn) stored as `name`, kept in its stored type.
    public func denseLinear(_ name: String, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?) throws(SheafError) -> DenseLinear {
        let weightT = try resident(name, rows: shape.dOut, cols: shape.dIn, transposed: true)
        return try DenseLinear(weightT: weightT, bias: bias, on: try requireBackend(module), name: module)
    }
}

/// W stored as is: {"weight": name} (dense modules a method lists explicitly).
public struct DenseKind: StoredLayerKind {
    public static let kindName = "dense"
    public let name = DenseKind.kindName
    public let roles = ["weight"]
    public init() {}

    public func layer(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?, context: StoredLayerContext
    ) throws(SheafError) -> any LinearLayer {
        try context.denseLinear(entry.tensors["weight"]!, module: module, shape: shape, bias: bias)
    }

    public func denseWeight(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext
    ) throws(SheafError) -> [Float] {
        try context.values(entry.tensors["weight"]!, [shape.dOut, shape.dIn])
    }
}

/// W ≈ C·B: {"basis": Bᵀ (rank, dIn), "coefficients": C (dOut, rank)}, both in PyTorch
/// orientation (two chained nn.Linear weights), y = x·basisᵀ·coefficientsᵀ. The basis may be
/// shared by the same matrix type of several layers (Basis Sharing) and is uploaded once.
public struct LowRankKind: StoredLayerKind {
    public static let kindName = "low-rank"
    public let name = LowRankKind.kindName
    public let roles = ["basis", "coefficients"]
    public init() {}

    func rank(_ entry: CompressedManifest.Module, module: String, dIn: Int, context: StoredLayerContext) throws(SheafError) -> Int {
        let basis = entry.tensors["basis"]!, shape = try context.shape(basis)
        guard shape.count == 2, shape[1] == dIn, shape[0] >= 1 else {
            throw .shapeMismatch(op: "load \(context.files.path)", detail: "basis '\(basis)' of \(module) has shape \(shape), expected (rank, \(dIn))")
        }
        return shape[0]
    }

    public func layer(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?, context: StoredLayerContext
    ) throws(SheafError) -> any LinearLayer {
        let backend = try context.requireBackend(module)
        let (basisName, coefficientsName) = (entry.tensors["basis"]!, entry.tensors["coefficients"]!)
        let k = try rank(entry, module: module, dIn: shape.dIn, context: context)
        // Bᵀ (rank, dIn) and C (dOut, rank) as stored, uploaded transposed: B (dIn, rank), Cᵀ (rank, dOut).
        let basis = try context.resident(basisName, rows: k, cols: shape.dIn, transposed: true, key: "low-rank basis " + basisName)
        let coefficients = try context.resident(coefficientsName, rows: shape.dOut, cols: k, transposed: true)
        return try LowRankLinear(
            basis: basis, basisName: basisName, coefficients: coefficients, coefficientsName: coefficientsName, bias: bias,
            scratch: try context.scratch(), on: backend, name: module)
    }

    /// W = coefficients (dOut, rank) · basis (rank, dIn), in Float64, rounded once to Float32.
    public func denseWeight(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext
    ) throws(SheafError) -> [Float] {
        let (basisName, coefficientsName) = (entry.tensors["basis"]!, entry.tensors["coefficients"]!)
        let k = try rank(entry, module: module, dIn: shape.dIn, context: context)
        let basis = try context.host("low-rank basis " + basisName) { () throws(SheafError) in
            try Matrix(rows: k, cols: shape.dIn, values: try context.values(basisName, [k, shape.dIn])).asDouble
        }
        let c = try Matrix(rows: shape.dOut, cols: k, values: try context.values(coefficientsName, [shape.dOut, k])).asDouble
        return try LAPACK.multiply(c, basis).asFloat.values
    }
}

/// SWSC's clustered module: {"centroids": (k, dIn) for rows or (k, dOut) for cols, "labels":
/// (1, channels), one per channel (U8 or U16), and optionally the residual "basis" (rank, dIn) and "coefficients"
/// (dOut, rank) as in "low-rank"}. Kind "clustered-rows" or "clustered-cols".
public struct ClusteredKind: StoredLayerKind {
    public let channels: ClusteredLinear.Channels
    public var name: String { Self.name(channels) }
    public let roles = ["centroids", "labels"]
    public init(channels: ClusteredLinear.Channels) { self.channels = channels }

    public static func name(_ channels: ClusteredLinear.Channels) -> String { "clustered-" + channels.rawValue }

    struct Parts {
        var centroids: Matrix<Float>
        var labels: [Int32]
        var residual: (basisName: String, coefficientsName: String, rank: Int)?
    }

    func parts(_ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext) throws(SheafError) -> Parts {
        let (channelCount, length) = channels == .rows ? (shape.dOut, shape.dIn) : (shape.dIn, shape.dOut)
        let (centroidsName, labelsName) = (entry.tensors["centroids"]!, entry.tensors["labels"]!)
        let cShape = try context.shape(centroidsName)
        guard cShape.count == 2, cShape[1] == length, (1...channelCount).contains(cShape[0]) else {
            throw .shapeMismatch(op: "load \(context.files.path)", detail: "centroids '\(centroidsName)' of \(module) have shape \(cShape), expected (k ≤ \(channelCount), \(length))")
        }
        let k = cShape[0]
        let centroids = try Matrix(rows: k, cols: length, values: try context.values(centroidsName, cShape))
        let labelValues = try context.values(labelsName, [1, channelCount])
        var labels = [Int32](repeating: 0, count: channelCount)
        for (i, v) in labelValues.enumerated() {
            guard v >= 0, v < Float(k), v.rounded() == v else {
                throw .io(path: context.files.path, detail: "label \(v) of channel \(i) in '\(labelsName)' is not a cluster of 0..<\(k)")
            }
            labels[i] = Int32(v)
        }
        var residual: (String, String, Int)?
        switch (entry.tensors["basis"], entry.tensors["coefficients"]) {
        case (nil, nil): break
        case (let b?, let c?): residual = (b, c, try LowRankKind().rank(entry, module: module, dIn: shape.dIn, context: context))
        default: throw .io(path: context.files.path, detail: "module '\(module)' names only one of 'basis' and 'coefficients'")
        }
        return Parts(centroids: centroids, labels: labels, residual: residual)
    }

    public func layer(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?, context: StoredLayerContext
    ) throws(SheafError) -> any LinearLayer {
        let backend = try context.requireBackend(module)
        let p = try parts(entry, module: module, shape: shape, context: context)
        var stored = [entry.tensors["centroids"]!: p.centroids.count, entry.tensors["labels"]!: p.labels.count]
        if bias != nil { stored[module + ".bias"] = shape.dOut }
        var residual: LowRankLinear?
        if let r = p.residual {
            let low = try LowRankKind().layer(
                .init(kind: LowRankKind.kindName, tensors: ["basis": r.basisName, "coefficients": r.coefficientsName]), module: module,
                shape: shape, bias: nil, context: context)
            residual = low as? LowRankLinear
            stored.merge(low.storedTensors) { a, _ in a }
        }
        return try ClusteredLinear(
            channels: channels, centroids: p.centroids, labels: p.labels, residual: residual, inputSize: shape.dIn, outputSize: shape.dOut,
            bias: bias, storedTensors: stored, scratch: try context.scratch(), on: backend, name: module)
    }

    /// W' + coefficients·basis, the residual in Float64, rounded once.
    public func denseWeight(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext
    ) throws(SheafError) -> [Float] {
        let p = try parts(entry, module: module, shape: shape, context: context)
        var w = [Double](repeating: 0, count: shape.dOut * shape.dIn)
        if let r = p.residual {
            let low = try LowRankKind().denseWeight(
                .init(kind: LowRankKind.kindName, tensors: ["basis": r.basisName, "coefficients": r.coefficientsName]), module: module,
                shape: shape, context: context)
            for i in 0..<w.count { w[i] = Double(low[i]) }
        }
        for o in 0..<shape.dOut {
            for i in 0..<shape.dIn {
                let shared = channels == .rows ? p.centroids[Int(p.labels[o]), i] : p.centroids[Int(p.labels[i]), o]
                w[o * shape.dIn + i] += Double(shared)
            }
        }
        return w.map { Float($0) }
    }
}

/// A round-to-nearest quantised module (`RoundToNearest`): {"codes": (dOut, bytes per row) U8,
/// "minima" and "steps": (dOut, groups) F16}, attributes {"bits", "group"}, as `rtn` wrote it
/// into format-2 checkpoints (it now writes a dense module with a quantised weight, which stays
/// quantised in memory). Dequantised to a dense layer when it loads.
public struct QuantizedKind: StoredLayerKind {
    public static let kindName = "quantized"
    public let name = QuantizedKind.kindName
    public let roles = ["codes", "minima", "steps"]
    public init() {}

    public func layer(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?, context: StoredLayerContext
    ) throws(SheafError) -> any LinearLayer {
        let w = try denseWeight(entry, module: module, shape: shape, context: context)
        let dense = try DenseLinear(weight: w, outputSize: shape.dOut, inputSize: shape.dIn, bias: bias, on: try context.requireBackend(module), name: module)
        return StoredAs(dense, storedTensors: Dictionary(uniqueKeysWithValues: try roles.map { (role) throws(SheafError) in
            let name = entry.tensors[role]!
            return (name, try context.shape(name).reduce(1, *))
        }) .merging(bias == nil ? [:] : [module + ".bias": shape.dOut]) { a, _ in a })
    }

    public func denseWeight(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), context: StoredLayerContext
    ) throws(SheafError) -> [Float] {
        let path = context.files.path
        guard let bits = entry.attributes?["bits"], (1...8).contains(bits), let group = entry.attributes?["group"], (1...shape.dIn).contains(group) else {
            throw .io(path: path, detail: "module '\(module)' of kind 'quantized' needs attributes bits (1-8) and group (1-\(shape.dIn)), got \(entry.attributes ?? [:])")
        }
        let groups = RoundToNearest.groups(dIn: shape.dIn, group: group), rowBytes = RoundToNearest.bytesPerRow(dIn: shape.dIn, bits: bits)
        let codes = try context.values(entry.tensors["codes"]!, [shape.dOut, rowBytes])
        let minima = try context.values(entry.tensors["minima"]!, [shape.dOut, groups])
        let steps = try context.values(entry.tensors["steps"]!, [shape.dOut, groups])
        if let bad = codes.firstIndex(where: { !($0 >= 0 && $0 <= 255 && $0.rounded() == $0) }) {
            throw .io(path: path, detail: "code byte \(codes[bad]) at \(bad) of '\(entry.tensors["codes"]!)' is not a byte")
        }
        return RoundToNearest.dequantize(codes: codes, minima: minima, steps: steps, dOut: shape.dOut, dIn: shape.dIn, bits: bits, group: group)
    }
}

/// A runtime layer that counts the tensors it was stored as, not the ones it computes with
/// (a quantised module runs dense).
final class StoredAs: LinearLayer, @unchecked Sendable {
    let inner: any LinearLayer
    let storedTensors: [String: Int]
    init(_ inner: any LinearLayer, storedTensors: [String: Int]) { (self.inner, self.storedTensors) = (inner, storedTensors) }
    var inputSize: Int { inner.inputSize }
    var outputSize: Int { inner.outputSize }
    func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError) { try inner.forward(x, into: y) }
}
