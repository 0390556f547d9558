import Foundation
import SheafCore

/// GGUF (or HuggingFace) model → a standard HuggingFace folder.
public enum HFExport {
    /// Writes config.json, model.safetensors (sharded above `shardBytes`), tokenizer.json and
    /// generation_config.json into `out`, with tensors under their HuggingFace names stored as
    /// `dtype`. Everything is written into a temporary sibling folder renamed to `out` at the
    /// end; an existing `out` is refused unless `replace`.
    public static func write(
        _ model: ModelFiles, to out: String, dtype: SafetensorsDType = .F32, replace: Bool = false,
        shardBytes: Int = 5 << 30, progress: @escaping (String) -> Void = { _ in }
    ) throws(SheafError) {
        let tokenizer = try model.tokenizer()
        try writeFolder(
            to: out, replace: replace, inputs: [model.path], config: model.config, configJSON: try model.config.configJSON(),
            tokenizer: tokenizer, shardBytes: shardBytes, notice: progress
        ) { () throws(SheafError) in
            // Deferred: each tensor is read and dequantised when the writer reaches it, so the
            // conversion holds one tensor at a time, not the whole model in float32.
            let counter = Counter(total: model.tensorNames.count, progress: progress)
            return try model.tensorNames.map { (name) throws(SheafError) in
                try TensorToWrite(name: name, shape: try model.info(name).shape, as: dtype) { () throws(SheafError) in
                    let values = try model.finiteFloat32(name, op: "convert")
                    counter.tick()
                    return values
                }
            }
        }
    }

    /// A model folder: the tensors from `makeTensors` as model.safetensors (sharded above
    /// `shardBytes`), `configJSON` as config.json, tokenizer.json (when given), generation_config.json and
    /// `extraFiles` (name → bytes). Everything is written into a temporary sibling folder renamed
    /// to `out` at the end (`OutputFolder`: never over one of `inputs`, an existing `out` only
    /// with `replace` and only when Sheaf wrote it, one writer at a time; `notice` hears what
    /// dead runs left and was removed).
    public static func writeFolder(
        to out: String, replace: Bool, inputs: [String], config: ModelConfig, configJSON: Data, tokenizer: Tokenizer?,
        extraFiles: [String: Data] = [:], shardBytes: Int = 5 << 30, notice: (String) -> Void = { _ in },
        makeTensors: () throws(SheafError) -> [TensorToWrite]
    ) throws(SheafError) {
        let folder = try OutputFolder.prepare(out, inputs: inputs, replace: replace, notice: notice)
        let (out, partial) = (folder.path, folder.partial)
        do throws(SheafError) {
            try SafetensorsWriter.writeModel(
                try makeTensors(), metadata: ["format": "pt", OutputFolder.writtenByKey: OutputFolder.writtenByValue], to: partial,
                shardBytes: shardBytes)
            try atomicWrite(configJSON, to: partial + "/config.json")
            if let tokenizer { try atomicWrite(tokenizer.tokenizerJSON(), to: partial + "/tokenizer.json") }
            var generation: [String: Any] = ["_from_model_config": true]
            if let b = config.bosTokenID { generation["bos_token_id"] = b }
            if let e = config.eosTokenID { generation["eos_token_id"] = e }
            guard let json = try? JSONSerialization.data(withJSONObject: generation, options: [.prettyPrinted, .sortedKeys]) else {
                throw .io(path: out, detail: "cannot encode generation_config.json")
            }
            try atomicWrite(json, to: partial + "/generation_config.json")
            for (name, data) in extraFiles.sorted(by: { $0.key < $1.key }) { try atomicWrite(data, to: partial + "/" + name) }
            try folder.finish()
        } catch {
            folder.abandon()
            throw error
        }
    }
}

/// Progress of deferred tensors as the writer reaches them (from the writer's one thread).
private final class Counter: @unchecked Sendable {
    let total: Int, progress: (String) -> Void, t0 = monotonicSeconds()
    var done = 0

    init(total: Int, progress: @escaping (String) -> Void) {
        self.total = total
        self.progress = progress
    }

    func tick() {
        done += 1
        if done % 25 == 0 || done == total {
            progress("\(done)/\(total) tensors written (\(String(format: "%.1f", monotonicSeconds() - t0)) s)")
        }
    }
}
