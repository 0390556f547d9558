import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// Sheaf's compressed checkpoint: a HuggingFace-like folder (config.json with a `sheaf`
/// section, tokenizer.json, generation_config.json) whose model.safetensors holds every
/// untouched tensor under its HuggingFace name, each shared basis once and each layer's
/// coefficients, described by sheaf.json (see `CompressedManifest`).
public enum CompressedCheckpoint {
    /// The basis tensor of a group, e.g. "sheaf.bases.q_proj.layers.0-1".
    static func basisName(_ g: FactoredGroup) -> String {
        "sheaf.bases.\(g.type.rawValue).layers.\(g.layers.first!)-\(g.layers.last!)"
    }

    /// What `sheaf.json` records about the calibration and the source, besides the factors.
    public struct Provenance: Sendable {
        public var sheafVersion: String
        public var calibration: CompressedManifest.Calibration?
        public var sourceChecksum: String
        public init(sheafVersion: String, calibration: CompressedManifest.Calibration?, sourceChecksum: String) {
            (self.sheafVersion, self.calibration, self.sourceChecksum) = (sheafVersion, calibration, sourceChecksum)
        }
    }

    public static func manifest(_ r: CompressionResult, source: ModelFiles, provenance p: Provenance) -> CompressedManifest {
        let dense = source.config.linearParameterCount, stored = r.storedLinearParameters
        let o = r.options
        return CompressedManifest(
            sheafVersion: p.sheafVersion, method: o.method.rawValue, requestedRatio: o.ratio,
            achievedRatio: 1 - Double(stored) / Double(dense), denseLinearParameters: dense, storedLinearParameters: stored,
            groupSize: o.effectiveGroupSize, shared: o.shared.map(\.rawValue),
            rankOverrides: Dictionary(uniqueKeysWithValues: o.rankOverrides.map { ($0.key.rawValue, $0.value) }),
            whitened: o.method.whitened, refit: o.refitEnabled, whiteningFallbacks: r.whiteningFallbacks,
            calibration: p.calibration, seed: o.seed, source: source.path, sourceChecksum: p.sourceChecksum,
            groups: r.groups.map { g in
                CompressedManifest.Group(
                    type: g.type.rawValue, layers: g.layers, rank: g.rank, basis: basisName(g), energy: g.energy, error: g.error,
                    refitError: g.refitError, whiteningFallback: g.whiteningFallback)
            })
    }

    /// Writes the checkpoint to `out` (a temporary sibling renamed when complete).
    public static func write(
        _ r: CompressionResult, source: ModelFiles, provenance: Provenance, to out: String, replace: Bool,
        progress: (String) -> Void = { _ in }
    ) throws(SheafError) -> CompressedManifest {
        let manifest = manifest(r, source: source, provenance: provenance)
        let factoredWeights = Set(r.groups.flatMap { g in g.layers.map { g.type.module(layer: $0) + ".weight" } })
        let sheafSection: [String: Any] = [
            "method": manifest.method, "requested_ratio": manifest.requestedRatio, "achieved_ratio": manifest.achievedRatio,
            "group_size": manifest.groupSize, "manifest": CompressedManifest.fileName,
        ]
        try HFExport.writeFolder(
            to: out, replace: replace, config: source.config, configJSON: try source.config.configJSON(extra: ["sheaf": sheafSection]),
            tokenizer: try source.tokenizerIfPresent(), extraFiles: [CompressedManifest.fileName: try manifest.encoded()]
        ) { () throws(SheafError) in
            // Deferred: each tensor is read (or its factor encoded) only when the writer reaches it.
            var tensors: [TensorToWrite] = []
            for name in source.tensorNames where !factoredWeights.contains(name) {
                tensors.append(try TensorToWrite(name: name, shape: try source.info(name).shape) { () throws(SheafError) in
                    try source.float32(name)
                })
            }
            for g in r.groups {
                let basisT = g.basisT
                tensors.append(try TensorToWrite(name: basisName(g), shape: [basisT.rows, basisT.cols]) { basisT.values })
                for (p, layer) in g.layers.enumerated() {
                    let c = g.coefficientsT[p]
                    tensors.append(try TensorToWrite(name: g.type.module(layer: layer) + ".coefficients", shape: [c.rows, c.cols]) { c.values })
                }
            }
            progress("writing \(tensors.count) tensors (\(fixed(Double(tensors.reduce(0) { $0 + $1.byteCount }) / 1e6)) MB)")
            return tensors
        }
        return manifest
    }

    /// A compressed checkpoint → a standard dense HuggingFace folder of the same architecture,
    /// every factored weight reconstructed as W = Cᵀ·Bᵀ (float32).
    public static func exportDense(_ files: ModelFiles, to out: String, replace: Bool, progress: (String) -> Void = { _ in }) throws(SheafError) {
        guard let manifest = files.manifest else {
            throw .invalidArgument(op: "export", detail: "\(files.path) has no \(CompressedManifest.fileName): not a Sheaf compressed checkpoint")
        }
        let basisByModule = manifest.basisByModule, basisNames = Set(basisByModule.values)
        try HFExport.writeFolder(
            to: out, replace: replace, config: files.config, configJSON: try files.config.configJSON(), tokenizer: try files.tokenizerIfPresent()
        ) { () throws(SheafError) in
            // Deferred: each weight is reconstructed when the writer reaches it, so the export
            // holds the bases and one dense weight at a time, not the whole dense model.
            var tensors: [TensorToWrite] = []
            let bases = BasisCache(files)
            for name in files.tensorNames where !basisNames.contains(name) {
                let shape = try files.info(name).shape
                guard name.hasSuffix(".coefficients") else {
                    tensors.append(try TensorToWrite(name: name, shape: shape) { () throws(SheafError) in try files.float32(name) })
                    continue
                }
                let module = String(name.dropLast(".coefficients".count))
                guard let basisName = basisByModule[module] else {
                    throw .io(path: files.path, detail: "'\(name)' has no basis in \(CompressedManifest.fileName)")
                }
                let basisShape = try files.info(basisName).shape
                guard shape.count == 2, basisShape.count == 2, shape[1] == basisShape[0] else {
                    throw .shapeMismatch(op: "export \(files.path)", detail: "'\(name)' \(shape) against basis '\(basisName)' \(basisShape)")
                }
                tensors.append(try TensorToWrite(name: module + ".weight", shape: [shape[0], basisShape[1]]) { () throws(SheafError) in
                    let c = try Matrix(rows: shape[0], cols: shape[1], values: try files.float32(name)).asDouble
                    return try LAPACK.multiply(c, try bases.basisT(basisName)).asFloat.values
                })
            }
            progress("writing \(tensors.count) tensors, \(basisByModule.count) of them reconstructed")
            return tensors
        }
    }
}

/// The (rank, d_in) bases of a compressed checkpoint in Float64, read once each on first use
/// (the deferred tensors of a dense export share them; used from the writer's one thread).
private final class BasisCache: @unchecked Sendable {
    let files: ModelFiles
    var bases: [String: Matrix<Double>] = [:]

    init(_ files: ModelFiles) { self.files = files }

    func basisT(_ name: String) throws(SheafError) -> Matrix<Double> {
        if let b = bases[name] { return b }
        let s = try files.info(name).shape
        let b = try Matrix(rows: s[0], cols: s[1], values: try files.float32(name)).asDouble
        bases[name] = b
        return b
    }
}
