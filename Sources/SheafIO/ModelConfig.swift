import Foundation
import SheafCore

/// The Llama-family architecture of a checkpoint, from a HuggingFace `config.json` or from
/// GGUF metadata. Shapes: hidden `hiddenSize`, heads `headCount` × `headDim` for queries and
/// `kvHeadCount` × `headDim` for keys and values, SwiGLU MLP of `intermediateSize`.
public struct ModelConfig: Codable, Sendable, Equatable {
    /// Supported `model_type` values; anything else is refused by name.
    public static let supportedArchitectures = ["llama", "mistral", "qwen2"]

    public var architecture: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var vocabularySize: Int
    public var ropeTheta: Double
    public var rmsNormEps: Double
    public var maxPositions: Int
    public var tiedEmbeddings: Bool
    /// q, k and v projections carry biases (qwen2).
    public var attentionBias: Bool
    public var bosTokenID: Int?
    public var eosTokenID: Int?

    enum CodingKeys: String, CodingKey {
        case architecture = "model_type"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case layerCount = "num_hidden_layers"
        case headCount = "num_attention_heads"
        case kvHeadCount = "num_key_value_heads"
        case headDim = "head_dim"
        case vocabularySize = "vocab_size"
        case ropeTheta = "rope_theta"
        case rmsNormEps = "rms_norm_eps"
        case maxPositions = "max_position_embeddings"
        case tiedEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
        case bosTokenID = "bos_token_id"
        case eosTokenID = "eos_token_id"
    }

    /// Keys read only to refuse what Sheaf does not implement.
    enum RefusedKeys: String, CodingKey {
        case hiddenAct = "hidden_act"
        case ropeScaling = "rope_scaling"
    }

    /// The largest tensor, in elements, a config may describe: 2⁴⁰ (4 TiB of float32), far past
    /// any model and far below where Int products of sizes overflow.
    public static let maxTensorElements = 1 << 40

    public init(
        architecture: String, hiddenSize: Int, intermediateSize: Int, layerCount: Int, headCount: Int,
        kvHeadCount: Int, headDim: Int? = nil, vocabularySize: Int, ropeTheta: Double, rmsNormEps: Double,
        maxPositions: Int, tiedEmbeddings: Bool, attentionBias: Bool? = nil, bosTokenID: Int? = nil,
        eosTokenID: Int? = nil
    ) throws(SheafError) {
        self.architecture = architecture
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layerCount = layerCount
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim ?? (headCount > 0 ? hiddenSize / headCount : 0)
        self.vocabularySize = vocabularySize
        self.ropeTheta = ropeTheta
        self.rmsNormEps = rmsNormEps
        self.maxPositions = maxPositions
        self.tiedEmbeddings = tiedEmbeddings
        self.attentionBias = attentionBias ?? (architecture == "qwen2")
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        try validate()
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let arch = try c.decodeIfPresent(String.self, forKey: .architecture) ?? "(missing model_type)"
        let heads = try c.decode(Int.self, forKey: .headCount)
        let hidden = try c.decode(Int.self, forKey: .hiddenSize)
        // eos_token_id may be a list in newer configs: keep the first.
        let eos = (try? c.decodeIfPresent(Int.self, forKey: .eosTokenID))
            ?? (try? c.decodeIfPresent([Int].self, forKey: .eosTokenID))?.first
        // Sheaf's forward pass is SiLU-gated with plain RoPE: a model that needs anything else
        // is refused by name, never evaluated wrongly.
        let r = try decoder.container(keyedBy: RefusedKeys.self)
        let act = try r.decodeIfPresent(String.self, forKey: .hiddenAct) ?? "silu"
        guard act == "silu" || act == "swish" else {
            throw SheafError.invalidArgument(op: "model config", detail: "hidden_act '\(act)' is not supported (Sheaf runs SiLU-gated MLPs)")
        }
        if r.contains(.ropeScaling), !(try r.decodeNil(forKey: .ropeScaling)) {
            let fields = try? r.decode([String: JSONScalar].self, forKey: .ropeScaling)
            let kind = fields?["rope_type"]?.text ?? fields?["type"]?.text ?? "?"
            throw SheafError.invalidArgument(
                op: "model config", detail: "rope_scaling of type '\(kind)' is not supported (Sheaf applies plain RoPE); refusing rather than evaluating the model wrongly")
        }
        try self.init(
            architecture: arch, hiddenSize: hidden,
            intermediateSize: try c.decode(Int.self, forKey: .intermediateSize),
            layerCount: try c.decode(Int.self, forKey: .layerCount), headCount: heads,
            kvHeadCount: try c.decodeIfPresent(Int.self, forKey: .kvHeadCount) ?? heads,
            headDim: try c.decodeIfPresent(Int.self, forKey: .headDim),
            vocabularySize: try c.decode(Int.self, forKey: .vocabularySize),
            ropeTheta: try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10_000,
            rmsNormEps: try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6,
            maxPositions: try c.decodeIfPresent(Int.self, forKey: .maxPositions) ?? 2048,
            tiedEmbeddings: try c.decodeIfPresent(Bool.self, forKey: .tiedEmbeddings) ?? false,
            attentionBias: try c.decodeIfPresent(Bool.self, forKey: .attentionBias),
            bosTokenID: try? c.decodeIfPresent(Int.self, forKey: .bosTokenID), eosTokenID: eos)
    }

    public func validate() throws(SheafError) {
        let op = "model config"
        guard Self.supportedArchitectures.contains(architecture) else {
            throw .invalidArgument(
                op: op,
                detail: "unsupported architecture '\(architecture)' (supported: \(Self.supportedArchitectures.joined(separator: ", ")))")
        }
        for (name, v) in [
            ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize), ("num_hidden_layers", layerCount),
            ("num_attention_heads", headCount), ("num_key_value_heads", kvHeadCount), ("head_dim", headDim),
            ("vocab_size", vocabularySize), ("max_position_embeddings", maxPositions),
        ] where v <= 0 {
            throw .invalidArgument(op: op, detail: "\(name) must be positive, got \(v)")
        }
        // Sizes come from files: every product the model's tensors need must stay in range.
        func product(_ factors: [(String, Int)]) throws(SheafError) -> Int {
            var p = 1
            for (_, v) in factors {
                let (r, overflow) = p.multipliedReportingOverflow(by: v)
                guard !overflow, r <= Self.maxTensorElements else {
                    throw .invalidArgument(
                        op: op, detail: factors.map { "\($0.0) \($0.1)" }.joined(separator: " × ") + " exceeds \(Self.maxTensorElements) elements")
                }
                p = r
            }
            return p
        }
        let attentionWidth = try product([("num_attention_heads", headCount), ("head_dim", headDim)])
        _ = try product([("num_key_value_heads", kvHeadCount), ("head_dim", headDim)])
        _ = try product([("vocab_size", vocabularySize), ("hidden_size", hiddenSize)])
        _ = try product([("intermediate_size", intermediateSize), ("hidden_size", hiddenSize)])
        _ = try product([("num_attention_heads × head_dim", attentionWidth), ("hidden_size", hiddenSize)])
        let perLayer = MatrixType.allCases.reduce(0) { $0 + $1.shape(self).dOut * $1.shape(self).dIn }
        _ = try product([("num_hidden_layers", layerCount), ("linear parameters per layer", perLayer)])
        guard headCount % kvHeadCount == 0 else {
            throw .invalidArgument(op: op, detail: "num_attention_heads \(headCount) is not a multiple of num_key_value_heads \(kvHeadCount)")
        }
        guard headDim % 2 == 0 else { throw .invalidArgument(op: op, detail: "head_dim \(headDim) must be even for RoPE") }
        guard ropeTheta > 0, rmsNormEps > 0 else {
            throw .invalidArgument(op: op, detail: "rope_theta \(ropeTheta) and rms_norm_eps \(rmsNormEps) must be positive")
        }
    }

    /// Reads `config.json`.
    public static func load(configJSON path: String) throws(SheafError) -> ModelConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .io(path: path, detail: "cannot read config.json")
        }
        try checkJSON([UInt8](data), path: path, what: "config.json")
        do { return try JSONDecoder().decode(ModelConfig.self, from: data) } catch let e as SheafError {
            throw .io(path: path, detail: e.description)
        } catch let DecodingError.keyNotFound(key, _) {
            throw .io(path: path, detail: "missing key '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, context) {
            throw .io(path: path, detail: "wrong type at '\(context.codingPath.map(\.stringValue).joined(separator: "."))'")
        } catch let DecodingError.dataCorrupted(context) {
            throw .io(path: path, detail: "invalid config.json: \(describe(context))")
        } catch {
            throw .io(path: path, detail: "invalid config.json: \(error)")
        }
    }

    /// The HuggingFace `config.json` for this architecture (the fields transformers reads).
    public func configJSON(extra: [String: Any] = [:]) throws(SheafError) -> Data {
        let className = ["llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"][architecture]!
        var object: [String: Any] = [
            "architectures": [className], "model_type": architecture, "hidden_size": hiddenSize,
            "intermediate_size": intermediateSize, "num_hidden_layers": layerCount, "num_attention_heads": headCount,
            "num_key_value_heads": kvHeadCount, "head_dim": headDim, "vocab_size": vocabularySize,
            "rope_theta": ropeTheta, "rms_norm_eps": rmsNormEps, "max_position_embeddings": maxPositions,
            "tie_word_embeddings": tiedEmbeddings, "hidden_act": "silu", "torch_dtype": "float32",
        ]
        if architecture != "qwen2" { object["attention_bias"] = attentionBias }
        if let bosTokenID { object["bos_token_id"] = bosTokenID }
        if let eosTokenID { object["eos_token_id"] = eosTokenID }
        for (k, v) in extra { object[k] = v }
        do { return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]) } catch {
            throw .invalidArgument(op: "config.json", detail: "cannot encode: \(error)")
        }
    }

}

/// A JSON scalar read loosely (rope_scaling's fields, to name what is refused).
struct JSONScalar: Decodable {
    let text: String
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) { text = s } else if let d = try? c.decode(Double.self) { text = "\(d)" } else { text = "?" }
    }
}

/// A decoding failure in words: where, and what (Foundation's own text, "The data isn't in the
/// correct format", names neither).
func describe(_ context: DecodingError.Context) -> String {
    let at = context.codingPath.map(\.stringValue).joined(separator: ".")
    var text = context.debugDescription
    if let underlying = context.underlyingError as NSError?, let detail = underlying.userInfo["NSDebugDescription"] as? String {
        text += " (\(detail))"
    }
    return (at.isEmpty ? "" : "at '\(at)': ") + text
}
