import Foundation
import SheafCore
import SheafIO

let inspectHelp = """
    USAGE: sheaf inspect MODEL [--json]

    MODEL is a HuggingFace folder (config.json + safetensors) or a GGUF file. Prints the
    architecture, layer count, tensor shapes (layer 0 stands for every layer), stored
    dtypes/quant types, parameter counts and stored bytes by group (embedding, attention, MLP,
    bases, norms, head), and the bytes on disk by role (embedding, linear layers, norms, other
    files: headers, tokenizer, manifest). Reads headers only.
    """

let convertHelp = """
    USAGE: sheaf convert MODEL --out DIR [--dtype f32|f16|bf16] [--force]

    Writes a HuggingFace folder: config.json, model.safetensors (sharded above 5 GB),
    tokenizer.json and generation_config.json. GGUF tensors are dequantised, renamed to the
    HuggingFace names, and llama Q/K rows un-permuted. Default dtype: f32. The folder is
    written under a temporary name and renamed when complete; an existing DIR is refused
    unless --force.
    """

let tokenizeHelp = """
    USAGE: sheaf tokenize MODEL --text FILE [--ids] [--json]

    Tokenises FILE (UTF-8, as-is, no BOS/EOS) with the model's tokenizer (tokenizer.json of a
    folder, or the GGUF's tokenizer.ggml.* metadata) and prints the token count; --ids prints
    the ids too.
    """

enum ModelCommands {
    struct InspectReport: Encodable {
        struct Group: Encodable { var name: String; var parameters: Int; var tensors: Int; var bytes: Int }
        struct Tensor: Encodable { var name: String; var shape: [Int]; var type: String }
        var path: String
        var format: String
        var config: ModelConfig
        var fileBytes: Int
        /// Bytes on disk by role (embedding, linear layers, norms, other files).
        var bytes: StoredBytes
        var types: [String: Int]
        var groups: [Group]
        var totalParameters: Int
        var linearParameters: Int
        var tensors: [Tensor]
    }

    static func group(of name: String) -> String {
        if name.contains("embed_tokens") { return "embedding" }
        if name.hasPrefix("lm_head") { return "head" }
        if name.hasPrefix("sheaf.bases.") { return "bases" }  // a compressed checkpoint's shared bases
        if name.contains("self_attn.") { return "attention" }
        if name.contains("mlp.") { return "mlp" }
        return "norms"
    }

    static func inspect(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: [], flags: ["json", "help"])
        if a.flag("help") { print(inspectHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "inspect takes one MODEL (a folder or a .gguf file)") }
        let model = try ModelFiles.open(a.positionals[0])
        var types: [String: Int] = [:], groups: [String: (Int, Int, Int)] = [:], tensors: [InspectReport.Tensor] = []
        for name in model.tensorNames {
            let info = try model.info(name)
            types[info.type, default: 0] += 1
            let g = group(of: name)
            groups[g, default: (0, 0, 0)].0 += info.elementCount
            groups[g, default: (0, 0, 0)].1 += 1
            groups[g, default: (0, 0, 0)].2 += info.byteCount
            tensors.append(.init(name: name, shape: info.shape, type: info.type))
        }
        let order = ["embedding", "attention", "mlp", "bases", "norms", "head"]
        let report = InspectReport(
            path: model.path, format: model.format.rawValue, config: model.config, fileBytes: model.fileBytes, bytes: try model.storedBytes(),
            types: types, groups: order.compactMap { g in groups[g].map { .init(name: g, parameters: $0.0, tensors: $0.1, bytes: $0.2) } },
            totalParameters: groups.values.reduce(0) { $0 + $1.0 }, linearParameters: model.manifest?.storedLinearParameters ?? model.config.linearParameterCount,
            tensors: tensors)
        if a.flag("json") {
            try printJSON(report)
            return 0
        }
        let c = model.config
        print("\(model.path) (\(model.format.rawValue), \(fixed(Double(report.fileBytes) / 1e6)) MB)")
        print("architecture \(c.architecture): \(c.layerCount) layers, hidden \(c.hiddenSize), MLP \(c.intermediateSize), "
            + "\(c.headCount) query heads / \(c.kvHeadCount) key-value heads of \(c.headDim), vocabulary \(c.vocabularySize), "
            + "RoPE theta \(c.ropeTheta), RMSNorm eps \(c.rmsNormEps), head \(c.tiedEmbeddings ? "tied to the embedding" : "untied")"
            + (c.attentionBias ? ", q/k/v biases" : ""))
        print("stored types: " + types.sorted { $0.key < $1.key }.map { "\($0.key) × \($0.value)" }.joined(separator: ", "))
        print("parameters and bytes on disk:")
        for g in report.groups {
            print("  \(pad(g.name, 10)) \(pad(String(g.parameters), 12)) in \(pad("\(g.tensors) tensors", 12)) \(fixed(Double(g.bytes) / 1e6)) MB")
        }
        print("  \(pad("total", 10)) \(report.totalParameters); decoder linear layers \(report.linearParameters)")
        print("bytes on disk: \(report.bytes.summary)")
        print("tensors (layer 0 of \(c.layerCount) shown):")
        for t in tensors where !t.name.hasPrefix("model.layers.") || t.name.hasPrefix("model.layers.0.") {
            print("  \(pad(t.name, 44)) \(pad("\(t.shape)", 14)) \(t.type)")
        }
        return 0
    }

    static func convert(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: ["out", "dtype"], flags: ["force", "help"])
        if a.flag("help") { print(convertHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "convert takes one MODEL (a folder or a .gguf file)") }
        guard let out = a.value("out") else { throw UsageError(description: "convert needs --out DIR") }
        let name = a.value("dtype") ?? "f32"
        guard let dtype = SafetensorsDType(floatStorage: name) else {
            throw UsageError(description: "--dtype must be f32, f16 or bf16, got '\(name)'")
        }
        let model = try ModelFiles.open(a.positionals[0])
        guard model.manifest == nil else {
            throw UsageError(description: "\(model.path) is a Sheaf compressed checkpoint: 'sheaf export' writes it as a dense HuggingFace folder")
        }
        try HFExport.write(model, to: out, dtype: dtype, replace: a.flag("force"), progress: { note("convert: " + $0) })
        print("wrote \(out): \(model.tensorNames.count) tensors as \(dtype.rawValue), config.json, tokenizer.json, generation_config.json")
        return 0
    }

    static func tokenize(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: ["text"], flags: ["ids", "json", "help"])
        if a.flag("help") { print(tokenizeHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "tokenize takes one MODEL (a folder or a .gguf file)") }
        guard let textPath = a.value("text") else { throw UsageError(description: "tokenize needs --text FILE") }
        guard let bytes = FileManager.default.contents(atPath: textPath) else {
            throw SheafError.io(path: textPath, detail: "cannot read the text file")
        }
        guard let text = String(data: bytes, encoding: .utf8) else { throw SheafError.io(path: textPath, detail: "not valid UTF-8") }
        let tokenizer = try ModelFiles.open(a.positionals[0]).tokenizer()
        let t0 = monotonicSeconds()
        let ids = tokenizer.encode(text)
        let seconds = monotonicSeconds() - t0
        if a.flag("json") {
            struct Out: Encodable { var tokens: Int; var bytes: Int; var seconds: Double; var ids: [Int32]? }
            try printJSON(Out(tokens: ids.count, bytes: bytes.count, seconds: seconds, ids: a.flag("ids") ? ids : nil))
            return 0
        }
        print("\(ids.count) tokens from \(bytes.count) bytes (\(fixed(seconds, 3)) s)")
        if a.flag("ids") { print(ids.map(String.init).joined(separator: " ")) }
        return 0
    }
}
