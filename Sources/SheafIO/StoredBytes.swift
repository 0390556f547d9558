import Foundation
import SheafCore

/// What a tensor of a Llama-family checkpoint is for, by its name: where a model's bytes go.
public enum TensorRole: String, Sendable, CaseIterable {
    /// The token embedding and an untied output head.
    case embedding
    /// The decoder's linear layers in whatever form they are stored: dense weights, factors,
    /// shared bases, centroids and labels, quantisation codes and scales, biases.
    case linear
    /// Every other tensor (the RMSNorm weights).
    case other

    public static func of(_ name: String) -> TensorRole {
        if name == "model.embed_tokens.weight" || name.hasPrefix("lm_head.") { return .embedding }
        if name.hasPrefix("sheaf.") { return .linear }  // shared bases and other tensors only modules use
        if name.hasPrefix("model.layers."), name.contains(".self_attn.") || name.contains(".mlp.") { return .linear }
        return .other
    }
}

/// Bytes of a model on disk by role (stored tensor bytes, as the file holds them: F16 factors at
/// 2 bytes, codes at their own width), and what the files hold besides tensor data. Parameters
/// are counted elsewhere; these are bytes only.
public struct StoredBytes: Codable, Sendable, Equatable {
    /// The embedding and an untied head.
    public var embedding: Int
    /// The decoder's linear layers.
    public var linear: Int
    /// Other tensors (norms).
    public var otherTensors: Int
    /// Everything that is not tensor data: safetensors headers, config.json, tokenizer.json,
    /// sheaf.json, a method's pictures; for a GGUF, its header and metadata (the tokenizer).
    public var files: Int
    /// The whole folder (or GGUF file).
    public var total: Int

    /// "228.1 MB (embedding 56.6, linear layers 169.8, norms 0.1, other files 1.6 MB)".
    public var summary: String {
        func mb(_ b: Int) -> String { String(format: "%.1f", Double(b) / 1e6) }
        return "\(mb(total)) MB (embedding \(mb(embedding)), linear layers \(mb(linear)), norms \(mb(otherTensors)), "
            + "other files \(mb(files)) MB)"
    }
}

extension ModelFiles {
    /// This model's bytes on disk by role: each tensor's stored bytes under `TensorRole.of` its
    /// name; the rest of the folder (every regular file in it) or of the GGUF file as `files`.
    public func storedBytes() throws(SheafError) -> StoredBytes {
        var byRole: [TensorRole: Int] = [:]
        for name in tensorNames { byRole[TensorRole.of(name), default: 0] += try info(name).byteCount }
        let total: Int
        switch format {
        case .safetensors: total = folderBytes(path)
        case .gguf: total = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        }
        let tensors = byRole.values.reduce(0, +)
        return StoredBytes(
            embedding: byRole[.embedding] ?? 0, linear: byRole[.linear] ?? 0, otherTensors: byRole[.other] ?? 0,
            files: max(0, total - tensors), total: total)
    }
}
