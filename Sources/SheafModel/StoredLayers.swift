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
    public static let all: [any StoredLayerKind] = [DenseKind(), LowRankKind()]

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
}

/// W stored as is: {"weight": name} (dense modules a method lists explicitly).
public struct DenseKind: StoredLayerKind {
    public let name = "dense"
    public let roles = ["weight"]
    public init() {}

    public func layer(
        _ entry: CompressedManifest.Module, module: String, shape: (dOut: Int, dIn: Int), bias: [Float]?, context: StoredLayerContext
    ) throws(SheafError) -> any LinearLayer {
        try DenseLinear(
            weight: try denseWeight(entry, module: module, shape: shape, context: context), outputSize: shape.dOut, inputSize: shape.dIn,
            bias: bias, on: try context.requireBackend(module), name: module)
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
        let basis = try context.uploaded("low-rank basis " + basisName) { () throws(SheafError) in
            let stored = try Matrix(rows: k, cols: shape.dIn, values: try context.values(basisName, [k, shape.dIn]))
            return try backend.upload(stored.transposed, label: basisName)
        }
        return try LowRankLinear(
            basis: basis, basisName: basisName, coefficientsT: try context.values(coefficientsName, [shape.dOut, k]),
            coefficientsName: coefficientsName, outputSize: shape.dOut, bias: bias, scratch: try context.scratch(), on: backend, name: module)
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
