import Foundation
import SheafCore

/// A checkpoint on disk, seen with HuggingFace tensor names whatever its format: a
/// HuggingFace folder (config.json + model.safetensors or a sharded index) or a GGUF file
/// (names mapped from llama.cpp's, llama Q/K rows un-permuted to the HF order).
public final class ModelFiles: @unchecked Sendable {
    public enum Format: String, Sendable { case safetensors, gguf }

    public let path: String
    public let format: Format
    public let config: ModelConfig
    /// The underlying file(s) with their own tensor names.
    public let store: any TensorStore
    /// HF name → where its values come from.
    let sources: [String: Source]
    /// HF tensor names, sorted.
    public let tensorNames: [String]
    /// For a Sheaf compressed checkpoint (a folder with sheaf.json): what its factored layers are.
    public let manifest: CompressedManifest?

    struct Source {
        var storeName: String
        /// llama GGUF Q/K projections: un-permute rows with this many heads.
        var unpermuteHeads: Int?
        /// A tensor a compressed checkpoint stores quantised: its parts (`storeName` is unused).
        var quantized: CompressedManifest.QuantizedTensor? = nil
    }

    public static func open(_ path: String) throws(SheafError) -> ModelFiles {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw .io(path: path, detail: "no such file or folder")
        }
        if path.hasSuffix(".safetensors") && !isDir.boolValue {
            throw .io(path: path, detail: "give the model's folder (with config.json), not a single .safetensors file")
        }
        let files = isDir.boolValue ? try openFolder(path) : try openGGUF(path)
        try files.validateTensorSet()
        return files
    }

    /// The one check every command's model passes: the tensors are exactly what the config
    /// describes (each present with its shape, none for layers the config does not have), so a
    /// model with a missing or extra layer, a wrong width or no tensors is refused by name before
    /// anything runs or is written. Compressed modules' own tensors are checked by their kinds.
    public func validateTensorSet() throws(SheafError) {
        let c = config
        func expect(_ name: String, _ shape: [Int], _ why: String) throws(SheafError) {
            guard sources[name] != nil else {
                throw .io(path: path, detail: "missing tensor '\(name)' (\(why)); \(tensorNames.count) tensors present")
            }
            let got = try info(name).shape
            guard got == shape else {
                throw .io(path: path, detail: "tensor '\(name)' has shape \(got), the config says \(shape) (\(why))")
            }
        }
        let (v, d) = (c.vocabularySize, c.hiddenSize)
        try expect("model.embed_tokens.weight", [v, d], "vocab_size × hidden_size")
        try expect("model.norm.weight", [d], "hidden_size")
        if !c.tiedEmbeddings { try expect("lm_head.weight", [v, d], "vocab_size × hidden_size, untied") }
        for layer in 0..<c.layerCount {
            let why = "layer \(layer) of num_hidden_layers \(c.layerCount)"
            try expect("model.layers.\(layer).input_layernorm.weight", [d], why)
            try expect("model.layers.\(layer).post_attention_layernorm.weight", [d], why)
            for t in MatrixType.allCases {
                let module = t.module(layer: layer), (dOut, dIn) = t.shape(c)
                if manifest?.modules[module] == nil { try expect(module + ".weight", [dOut, dIn], why) }
                if t.hasBias(c) { try expect(module + ".bias", [dOut], why) }
            }
        }
        for name in tensorNames where name.hasPrefix("model.layers.") {
            let index = name.dropFirst("model.layers.".count).prefix { $0 != "." }
            if let layer = Int(index), layer >= c.layerCount {
                throw .io(path: path, detail: "tensor '\(name)' is beyond the config's num_hidden_layers \(c.layerCount)")
            }
        }
    }

    private init(
        path: String, format: Format, config: ModelConfig, store: any TensorStore, sources: [String: Source],
        manifest: CompressedManifest? = nil
    ) {
        self.manifest = manifest
        self.path = path
        self.format = format
        self.config = config
        self.store = store
        self.sources = sources
        tensorNames = sources.keys.sorted()
    }

    private static func openFolder(_ dir: String) throws(SheafError) -> ModelFiles {
        let config = try ModelConfig.load(configJSON: dir + "/config.json")
        let index = dir + "/model.safetensors.index.json", single = dir + "/model.safetensors"
        let store: any TensorStore
        if FileManager.default.fileExists(atPath: index) {
            store = try ShardedSafetensors(indexPath: index)
        } else if FileManager.default.fileExists(atPath: single) {
            store = try SafetensorsFile(path: single)
        } else {
            throw .io(path: dir, detail: "no model.safetensors or model.safetensors.index.json")
        }
        var sources: [String: Source] = [:]
        for name in store.tensorNames { sources[name] = Source(storeName: name, unpermuteHeads: nil) }
        let manifestPath = dir + "/" + CompressedManifest.fileName
        let manifest = FileManager.default.fileExists(atPath: manifestPath) ? try CompressedManifest.load(manifestPath) : nil
        // A quantised tensor is seen under its own name; its three parts are not tensors of the model.
        for (name, q) in (manifest?.quantizedTensors ?? [:]).sorted(by: { $0.key < $1.key }) {
            try checkQuantized(name, q, store: store, path: dir)
            guard sources[name] == nil else {
                throw .io(path: dir, detail: "tensor '\(name)' is both stored and listed as quantised in \(CompressedManifest.fileName)")
            }
            for part in [q.codes, q.minima, q.steps] { sources[part] = nil }
            sources[name] = Source(storeName: name, unpermuteHeads: nil, quantized: q)
        }
        return ModelFiles(path: dir, format: .safetensors, config: config, store: store, sources: sources, manifest: manifest)
    }

    private static func openGGUF(_ path: String) throws(SheafError) -> ModelFiles {
        let gguf = try GGUFFile(path: path)
        let config = try ggufConfig(gguf)
        var sources: [String: Source] = [:]
        for name in gguf.tensorNames {
            guard let hf = hfName(ggufName: name) else { continue }  // e.g. rope_freqs: not a weight
            var heads: Int?
            if config.architecture == "llama" && gguf.architecture == "llama" {
                if name.hasSuffix("attn_q.weight") || name.hasSuffix("attn_q.bias") { heads = config.headCount }
                if name.hasSuffix("attn_k.weight") || name.hasSuffix("attn_k.bias") { heads = config.kvHeadCount }
            }
            sources[hf] = Source(storeName: name, unpermuteHeads: heads)
        }
        return ModelFiles(path: path, format: .gguf, config: config, store: gguf, sources: sources)
    }

    /// llama.cpp tensor names → HuggingFace names.
    static func hfName(ggufName name: String) -> String? {
        let fixed = [
            "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight",
        ]
        if let f = fixed[name] { return f }
        let parts = name.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]) else { return nil }
        let blocks = [
            "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
            "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
            "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
            "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
            "attn_v.bias": "self_attn.v_proj.bias",
            "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
            "ffn_down.weight": "mlp.down_proj.weight",
        ]
        guard let suffix = blocks[parts[2]] else { return nil }
        return "model.layers.\(layer).\(suffix)"
    }

    /// The architecture from GGUF metadata (`general.architecture`, then `<arch>.*` keys).
    static func ggufConfig(_ g: GGUFFile) throws(SheafError) -> ModelConfig {
        let arch = g.architecture ?? "(missing general.architecture)"
        func int(_ key: String) throws(SheafError) -> Int {
            guard let v = g.metadata["\(arch).\(key)"]?.int else {
                throw .io(path: g.path, detail: "missing or non-integer metadata key '\(arch).\(key)'")
            }
            return v
        }
        // GGUF stores these as float32: take the shortest decimal that rounds to it (1e-05,
        // not 9.99999974e-06), as the HuggingFace config that produced it had.
        func optionalDouble(_ key: String) -> Double? {
            guard let v = g.metadata["\(arch).\(key)"]?.double else { return nil }
            return Double(Float(v).description) ?? v
        }
        guard ModelConfig.supportedArchitectures.contains(arch) else {
            throw .io(path: g.path, detail: "unsupported architecture '\(arch)' (supported: \(ModelConfig.supportedArchitectures.joined(separator: ", ")))")
        }
        if let scaling = g.metadata["\(arch).rope.scaling.type"]?.string, scaling != "none" {
            throw .io(path: g.path, detail: "\(arch).rope.scaling.type '\(scaling)' is not supported (Sheaf applies plain RoPE); refusing rather than evaluating the model wrongly")
        }
        let heads = try int("attention.head_count"), hidden = try int("embedding_length")
        let vocab = g.metadata["tokenizer.ggml.tokens"]?.stringArray?.count
            ?? g.metadata["\(arch).vocab_size"]?.int ?? (try? g.info("token_embd.weight").shape.first) ?? 0
        do {
            return try ModelConfig(
                architecture: arch, hiddenSize: hidden, intermediateSize: try int("feed_forward_length"),
                layerCount: try int("block_count"), headCount: heads,
                kvHeadCount: g.metadata["\(arch).attention.head_count_kv"]?.int ?? heads,
                headDim: g.metadata["\(arch).attention.key_length"]?.int, vocabularySize: vocab,
                ropeTheta: optionalDouble("rope.freq_base") ?? 10_000,
                rmsNormEps: optionalDouble("attention.layer_norm_rms_epsilon") ?? 1e-5,
                maxPositions: g.metadata["\(arch).context_length"]?.int ?? 2048,
                tiedEmbeddings: !g.tensorNames.contains("output.weight"),
                bosTokenID: g.metadata["tokenizer.ggml.bos_token_id"]?.int,
                eosTokenID: g.metadata["tokenizer.ggml.eos_token_id"]?.int)
        } catch {
            throw .io(path: g.path, detail: error.description)
        }
    }

    private func source(_ name: String) throws(SheafError) -> Source {
        guard let s = sources[name] else { throw .io(path: path, detail: "no tensor named '\(name)'") }
        return s
    }

    /// That the parts of quantised tensor `name` exist with the shapes `q` implies (codes U8), from
    /// the headers alone: a checkpoint whose table and tensors disagree is refused when it opens.
    static func checkQuantized(_ name: String, _ q: CompressedManifest.QuantizedTensor, store: any TensorStore, path: String)
        throws(SheafError)
    {
        let what = "quantised tensor '\(name)' (\(q.bits) bits, group \(q.group), shape \(q.shape))"
        guard q.shape.count == 2, q.shape.allSatisfy({ $0 >= 1 }), (1...8).contains(q.bits), (1...q.shape[1]).contains(q.group) else {
            throw .io(path: path, detail: "\(what): needs a (rows, cols) shape, bits 1-8 and a group of 1 to cols")
        }
        let (rows, cols) = (q.shape[0], q.shape[1])
        let expected = [
            (q.codes, "codes", [rows, RoundToNearest.bytesPerRow(dIn: cols, bits: q.bits)]),
            (q.minima, "minima", [rows, RoundToNearest.groups(dIn: cols, group: q.group)]),
            (q.steps, "steps", [rows, RoundToNearest.groups(dIn: cols, group: q.group)]),
        ]
        for (part, role, shape) in expected {
            guard store.tensorNames.contains(part) else { throw .io(path: path, detail: "\(what): its \(role) '\(part)' are not in the files") }
            let info = try store.info(part)
            guard info.shape == shape else {
                throw .io(path: path, detail: "\(what): its \(role) '\(part)' have shape \(info.shape), expected \(shape)")
            }
            guard role != "codes" || info.type == SafetensorsDType.U8.rawValue else {
                throw .io(path: path, detail: "\(what): its codes '\(part)' are \(info.type), expected U8")
            }
        }
    }

    /// Shape in PyTorch order and the stored type (e.g. "Q4_1", "BF16"; "Q8G64" for a tensor a
    /// compressed checkpoint stores as 8-bit codes in groups of 64), under the HF name.
    public func info(_ name: String) throws(SheafError) -> TensorInfo {
        let s = try source(name)
        if let q = s.quantized {
            var bytes = 0
            for part in [q.codes, q.minima, q.steps] { bytes += try store.info(part).byteCount }
            return TensorInfo(name: name, shape: q.shape, type: "Q\(q.bits)G\(q.group)", byteCount: bytes)
        }
        var i = try store.info(s.storeName)
        i.name = name
        return i
    }

    /// A tensor stored quantised, as its parts: codes (rows × bytes per row, row-major), minima
    /// and steps (rows × groups): one a compressed checkpoint lists as quantised, or a GGUF
    /// matrix of Q8_0 or Q4_1 blocks (`ggmlBlocks`); nil for any other tensor.
    public func quantized(_ name: String) throws(SheafError)
        -> (layout: CompressedManifest.QuantizedTensor, codes: [UInt8], minima: [Float], steps: [Float])?
    {
        let s = try source(name)
        if format == .gguf { return try ggmlBlocks(name, s) }
        guard let q = s.quantized else { return nil }
        guard let codes = try safetensorsBytes(q.codes) else {
            throw .io(path: path, detail: "quantised tensor '\(name)' outside a safetensors folder")
        }
        let (minima, steps) = (try store.float32(q.minima), try store.float32(q.steps))
        for (values, part) in [(minima, q.minima), (steps, q.steps)] {
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw .nonFinite(op: "load \(path)", what: "tensor '\(part)' of quantised '\(name)' at element \(bad) (\(values[bad]))")
            }
        }
        return (q, codes, minima, steps)
    }

    /// A GGUF tensor of Q8_0 or Q4_1 blocks as the codec's codes, minima and steps (exactly the
    /// values its blocks hold: `GGMLQuant.asRoundToNearest`; groups of 32), rows in the HF order;
    /// nil for other types. What keeps the source GGUF as small in memory as it is on disk.
    func ggmlBlocks(_ name: String, _ s: Source) throws(SheafError)
        -> (layout: CompressedManifest.QuantizedTensor, codes: [UInt8], minima: [Float], steps: [Float])?
    {
        guard let gguf = store as? GGUFFile else { return nil }
        let type = try gguf.ggmlType(s.storeName), shape = try info(name).shape
        guard type == .Q8_0 || type == .Q4_1, shape.count == 2, shape[1] % 32 == 0 else { return nil }
        let order = try s.unpermuteHeads.map { (heads) throws(SheafError) in try LlamaPermutation.ggufRow(ofHF: shape[0], heads: heads) }
        guard let (bits, codes, minima, steps) = GGMLQuant.asRoundToNearest(
            type, try gguf.rawBytes(s.storeName), rows: shape[0], cols: shape[1], rowOrder: order)
        else { return nil }
        for (values, what) in [(minima, "block scale or minimum"), (steps, "block scale")] {
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw .nonFinite(op: "load \(path)", what: "tensor '\(name)' \(what) \(bad) (\(values[bad]))")
            }
        }
        let layout = CompressedManifest.QuantizedTensor(shape: shape, bits: bits, group: 32, codes: "", minima: "", steps: "")
        return (layout, codes, minima, steps)
    }

    /// Float32 values in the HuggingFace layout.
    public func float32(_ name: String) throws(SheafError) -> [Float] {
        let s = try source(name)
        if s.quantized != nil, let (q, codes, minima, steps) = try quantized(name) {
            return RoundToNearest.dequantize(
                codes: codes.map(Float.init), minima: minima, steps: steps, dOut: q.shape[0], dIn: q.shape[1], bits: q.bits, group: q.group)
        }
        let values = try store.float32(s.storeName)
        guard let heads = s.unpermuteHeads else { return values }
        return try LlamaPermutation.unpermute(values, shape: try store.info(s.storeName).shape, heads: heads)
    }

    /// The stored bytes of `storeName` in a safetensors file or shards; nil for another store.
    private func safetensorsBytes(_ storeName: String) throws(SheafError) -> [UInt8]? {
        if let file = store as? SafetensorsFile { return try file.rawBytes(storeName) }
        if let shards = store as? ShardedSafetensors { return try shards.rawBytes(storeName) }
        return nil
    }

    /// A tensor stored as F16 or BF16 in a safetensors folder, as its 16-bit patterns in the
    /// HuggingFace layout (row-major in `info(name).shape`), checked for infinities and NaN by
    /// name; nil when it is stored otherwise (F32, a GGUF block type), for `float32` to read. What
    /// keeps a 16-bit checkpoint 16-bit in memory.
    public func halfBits(_ name: String) throws(SheafError) -> (dtype: SafetensorsDType, bits: [UInt16])? {
        let s = try source(name)
        guard s.unpermuteHeads == nil, format == .safetensors, let dtype = SafetensorsDType(rawValue: try info(name).type),
            dtype == .F16 || dtype == .BF16
        else { return nil }
        guard let bytes = try safetensorsBytes(s.storeName) else { return nil }
        var bits = [UInt16](repeating: 0, count: bytes.count / 2)
        for i in bits.indices { bits[i] = UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8 }
        let special: UInt16 = dtype == .F16 ? 0x7C00 : 0x7F80  // exponent all ones: infinity or NaN
        if let bad = bits.firstIndex(where: { $0 & special == special }) {
            let value = dtype == .F16 ? HalfFloat.f16ToFloat(bits[bad]) : HalfFloat.bf16ToFloat(bits[bad])
            throw .nonFinite(op: "load \(path)", what: "tensor '\(name)' at element \(bad) (\(value))")
        }
        return (dtype, bits)
    }

    /// `float32(name)`, refused with the tensor's name and the first bad element when any value is
    /// NaN or infinite: what a command that writes a model copies (a written model must not carry
    /// values that `eval` would refuse).
    public func finiteFloat32(_ name: String, op: String) throws(SheafError) -> [Float] {
        let values = try float32(name)
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw .nonFinite(op: "\(op) \(path)", what: "tensor '\(name)' at element \(bad) (\(values[bad]))")
        }
        return values
    }

    /// The files holding the weights (and, for a folder, config.json), sorted.
    var weightFiles: [String] {
        if format == .gguf { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { $0.hasSuffix(".safetensors") || $0 == "config.json" }.sorted().map { path + "/" + $0 }
    }

    /// SHA-256 over the weight files' names and bytes, streamed in 8 MiB reads: identifies the
    /// source of a compressed checkpoint and keys the calibration cache.
    public func checksum() throws(SheafError) -> String {
        var hash = SheafCore.SHA256()
        for f in weightFiles {
            let name = Array((f as NSString).lastPathComponent.utf8)
            name.withUnsafeBytes { hash.update($0) }
            guard let handle = FileHandle(forReadingAtPath: f) else { throw .io(path: f, detail: "cannot open to checksum") }
            defer { try? handle.close() }
            while true {
                let chunk: Data
                do { chunk = try handle.read(upToCount: 8 << 20) ?? Data() } catch {
                    throw .io(path: f, detail: "read failed while checksumming: \(error.localizedDescription)")
                }
                if chunk.isEmpty { break }
                chunk.withUnsafeBytes { hash.update($0) }
            }
        }
        return SheafCore.SHA256.hex(hash.finalize())
    }

    /// Bytes of the model's files on disk.
    public var fileBytes: Int {
        let files = weightFiles.filter { !$0.hasSuffix("config.json") }
        return files.reduce(0) { total, f in
            total + ((try? FileManager.default.attributesOfItem(atPath: f)[.size] as? Int) ?? 0)
        }
    }

    /// The tokenizer if the checkpoint has one (a GGUF file always does; a folder when it holds
    /// tokenizer.json), so that tools passing a model through keep it.
    public func tokenizerIfPresent() throws(SheafError) -> Tokenizer? {
        if format == .safetensors && !FileManager.default.fileExists(atPath: path + "/tokenizer.json") { return nil }
        return try tokenizer()
    }

    /// The tokenizer: tokenizer.json of a folder, or built from GGUF metadata.
    public func tokenizer() throws(SheafError) -> Tokenizer {
        switch format {
        case .safetensors:
            return try Tokenizer.load(tokenizerJSON: path + "/tokenizer.json")
        case .gguf:
            guard let g = store as? GGUFFile else { throw .io(path: path, detail: "not a GGUF store") }
            return try Tokenizer.fromGGUF(g)
        }
    }
}

extension Tokenizer {
    /// A tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.
    public static func fromGGUF(_ g: GGUFFile) throws(SheafError) -> Tokenizer {
        let m = g.metadata
        guard let model = m["tokenizer.ggml.model"]?.string, let tokens = m["tokenizer.ggml.tokens"]?.stringArray else {
            throw .io(path: g.path, detail: "no tokenizer in the GGUF metadata (tokenizer.ggml.model / tokenizer.ggml.tokens)")
        }
        do {
            let spec = try TokenizerSpec.fromGGUFFields(
                model: model, pre: m["tokenizer.ggml.pre"]?.string, tokens: tokens,
                merges: m["tokenizer.ggml.merges"]?.stringArray,
                tokenTypes: m["tokenizer.ggml.token_type"]?.intArray?.map { Int32(truncatingIfNeeded: $0) },
                scores: m["tokenizer.ggml.scores"]?.floatArray?.map { Float($0) },
                bos: m["tokenizer.ggml.bos_token_id"]?.int, eos: m["tokenizer.ggml.eos_token_id"]?.int,
                unk: m["tokenizer.ggml.unknown_token_id"]?.int, addBOS: m["tokenizer.ggml.add_bos_token"]?.bool)
            return try Tokenizer(spec: spec)
        } catch {
            throw .io(path: g.path, detail: "tokenizer: \(error.description)")
        }
    }
}
