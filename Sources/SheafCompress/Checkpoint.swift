import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// Sheaf's compressed checkpoint: a HuggingFace-like folder (config.json with a `sheaf`
/// section, tokenizer.json, generation_config.json) whose model.safetensors holds every
/// untouched tensor under its HuggingFace name and each tensor the compressed modules use,
/// once (or, quantised, its codes, minima and steps), described by sheaf.json (format 3, see
/// `CompressedManifest`).
public enum CompressedCheckpoint {
    /// What `sheaf.json` records about the calibration and the source, besides the method.
    public struct Provenance: Sendable {
        public var sheafVersion: String
        public var calibration: CompressedManifest.Calibration?
        public var sourceChecksum: String
        public init(sheafVersion: String, calibration: CompressedManifest.Calibration?, sourceChecksum: String) {
            (self.sheafVersion, self.calibration, self.sourceChecksum) = (sheafVersion, calibration, sourceChecksum)
        }
    }

    /// Linear parameters as stored: each distinct tensor the compressed modules use, once, plus
    /// the weights of the modules left dense. `shape(name)` gives a module tensor's shape.
    static func storedLinearParameters(
        config c: ModelConfig, modules: [String: CompressedManifest.Module], shape: (String) throws(SheafError) -> [Int]
    ) throws(SheafError) -> Int {
        var total = 0
        for layer in 0..<c.layerCount {
            for t in MatrixType.allCases where modules[t.module(layer: layer)] == nil { total += t.shape(c).dOut * t.shape(c).dIn }
        }
        for name in Set(modules.values.flatMap(\.usedTensors)) { total += try shape(name).reduce(1, *) }
        return total
    }

    /// The source tensors the checkpoint copies (every one the method neither replaced nor
    /// wrote), each with its storage: the embedding's and an untied head's, the checkpoint's for
    /// other matrices (modules left dense), F32 for vectors (norms, biases: a few KB).
    static func untouched(_ r: CompressionResult, source: ModelFiles) throws(SheafError) -> [(name: String, shape: [Int], storage: TensorStorage)] {
        let replacedWeights = Set(r.output.modules.keys.map { $0 + ".weight" })
        let written = Set(r.output.tensors.map(\.name))
        var out: [(String, [Int], TensorStorage)] = []
        for name in source.tensorNames where !replacedWeights.contains(name) && !written.contains(name) {
            let shape = try source.info(name).shape
            let storage: TensorStorage = shape.count < 2 ? .float(.F32) : TensorRole.of(name) == .embedding ? r.embeddingStorage : r.dtype
            out.append((name, shape, storage))
        }
        return out
    }

    public static func manifest(_ r: CompressionResult, source: ModelFiles, provenance p: Provenance) throws(SheafError) -> CompressedManifest {
        var shapes: [String: [Int]] = [:]
        for t in r.output.tensors { shapes[t.name] = [t.value.rows, t.value.cols] }
        let dense = source.config.linearParameterCount
        let stored = try storedLinearParameters(config: source.config, modules: r.output.modules) { (name) throws(SheafError) in
            guard let s = shapes[name] else {
                throw .invalidArgument(op: "compress \(r.method)", detail: "a module names tensor '\(name)', which the method did not produce")
            }
            return s
        }
        return CompressedManifest(
            sheafVersion: p.sheafVersion, requestedRatio: r.requestedRatio, achievedRatio: 1 - Double(stored) / Double(dense),
            denseLinearParameters: dense, storedLinearParameters: stored, calibration: p.calibration, source: source.path,
            sourceChecksum: p.sourceChecksum, modules: r.output.modules,
            method: .init(name: r.method, options: r.options, report: r.output.report.json), dtype: r.dtype.name,
            quantizedTensors: try quantizedTable(r, source: source), embeddingDtype: r.embeddingStorage.name)
    }

    /// Every tensor the checkpoint stores quantised: the method's and the source's it copies.
    static func quantizedTable(_ r: CompressionResult, source: ModelFiles) throws(SheafError) -> [String: CompressedManifest.QuantizedTensor]? {
        var table = r.output.quantized.mapValues(\.entry)
        for t in try untouched(r, source: source) {
            if case .quantized(let bits, let group) = t.storage {
                table[t.name] = .entry(t.name, shape: t.shape, bits: bits, group: group)
            }
        }
        return table.isEmpty ? nil : table
    }

    /// Writes the checkpoint to `out` (a temporary sibling renamed when complete).
    public static func write(
        _ r: CompressionResult, source: ModelFiles, provenance: Provenance, to out: String, replace: Bool,
        progress: (String) -> Void = { _ in }
    ) throws(SheafError) -> CompressedManifest {
        let manifest = try manifest(r, source: source, provenance: provenance)
        var sheafSection: [String: Any] = [
            "method": manifest.method.name, "achieved_ratio": manifest.achievedRatio, "manifest": CompressedManifest.fileName,
            "dtype": r.dtype.name, "embedding_dtype": r.embeddingStorage.name,
        ]
        if let ratio = manifest.requestedRatio { sheafSection["requested_ratio"] = ratio }
        let copied = try untouched(r, source: source)
        try HFExport.writeFolder(
            to: out, replace: replace, inputs: [source.path], config: source.config,
            configJSON: try source.config.configJSON(extra: ["sheaf": sheafSection]), tokenizer: try source.tokenizerIfPresent(),
            extraFiles: r.output.files.merging([CompressedManifest.fileName: try manifest.encoded()]) { $1 }, notice: progress
        ) { () throws(SheafError) in
            // Deferred: each source tensor is read only when the writer reaches it.
            var tensors: [TensorToWrite] = []
            for t in copied {
                let name = t.name
                let read = { @Sendable () throws(SheafError) -> [Float] in try source.finiteFloat32(name, op: "compress") }
                switch t.storage {
                case .float(let dtype): tensors.append(try TensorToWrite(name: name, shape: t.shape, as: dtype, values: read))
                case .quantized(let bits, let group):
                    tensors += CompressedManifest.QuantizedTensor.deferredParts(name, shape: t.shape, bits: bits, group: group, values: read).parts
                }
            }
            for t in r.output.tensors {
                if let q = r.output.quantized[t.name] {
                    tensors += q.parts
                    continue
                }
                let m = t.value
                tensors.append(try TensorToWrite(name: t.name, shape: [m.rows, m.cols], as: r.output.storedTypes[t.name] ?? .F32) { m.values })
            }
            progress("writing \(tensors.count) tensors (\(fixed(Double(tensors.reduce(0) { $0 + $1.byteCount }) / 1e6)) MB)")
            return tensors
        }
        return manifest
    }

    /// A compressed checkpoint → a standard dense HuggingFace folder of the same architecture:
    /// every compressed module's weight as its stored-layer kind reconstructs it (float32), the
    /// tensors only the modules use left out, every other tensor as stored.
    public static func exportDense(_ files: ModelFiles, to out: String, replace: Bool, progress: (String) -> Void = { _ in }) throws(SheafError) {
        guard let manifest = files.manifest else {
            throw .invalidArgument(op: "export", detail: "\(files.path) has no \(CompressedManifest.fileName): not a Sheaf compressed checkpoint")
        }
        let c = files.config
        var compressed: [(module: String, type: MatrixType, entry: CompressedManifest.Module, kind: any StoredLayerKind)] = []
        for (module, entry) in manifest.modules.sorted(by: { $0.key < $1.key }) {
            guard let (_, type) = MatrixType.parse(module: module) else {
                throw .io(path: files.path, detail: "\(CompressedManifest.fileName) names module '\(module)', not a linear layer of \(c.architecture)")
            }
            compressed.append((module, type, entry, try StoredLayerKinds.kind(of: entry, module: module, in: files.path)))
        }
        let moduleTensors = manifest.moduleTensors
        try HFExport.writeFolder(
            to: out, replace: replace, inputs: [files.path], config: c, configJSON: try c.configJSON(),
            tokenizer: try files.tokenizerIfPresent(), notice: progress
        ) { () throws(SheafError) in
            // Deferred: each weight is reconstructed when the writer reaches it, so the export
            // holds the shared tensors and one dense weight at a time, not the whole dense model.
            var tensors: [TensorToWrite] = []
            let context = StoredLayerContext(files: files, backend: nil)
            for name in files.tensorNames where !moduleTensors.contains(name) {
                tensors.append(try TensorToWrite(name: name, shape: try files.info(name).shape) { () throws(SheafError) in
                    try context.values(name, try files.info(name).shape)
                })
            }
            for m in compressed {
                let shape = m.type.shape(c)
                tensors.append(try TensorToWrite(name: m.module + ".weight", shape: [shape.dOut, shape.dIn]) { () throws(SheafError) in
                    try m.kind.denseWeight(m.entry, module: m.module, shape: shape, context: context)
                })
            }
            progress("writing \(tensors.count) tensors, \(compressed.count) of them reconstructed")
            return tensors
        }
    }
}
