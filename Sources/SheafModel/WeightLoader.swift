import SheafBackend
import SheafCore
import SheafIO

/// Reads a model's tensors by HuggingFace name, checks shape and finiteness (naming the
/// tensor), and uploads them to the backend: a whole model for evaluation, or one layer at a
/// time for calibration.
public struct WeightLoader: Sendable {
    public let files: ModelFiles
    public let backend: any Backend
    var config: ModelConfig { files.config }

    public init(files: ModelFiles, backend: any Backend) {
        self.files = files
        self.backend = backend
    }

    func values(_ name: String, _ shape: [Int]) throws(SheafError) -> [Float] {
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

    /// The token embedding (vocabulary, hidden) on the host.
    func embedding() throws(SheafError) -> [Float] {
        try values("model.embed_tokens.weight", [config.vocabularySize, config.hiddenSize])
    }

    /// A (1, n) vector on the backend (norm weights).
    func vector(_ name: String, _ n: Int) throws(SheafError) -> MatrixView {
        try MatrixView(backend.upload(try values(name, [n]), label: name), rows: 1, cols: n)
    }

    func linear(_ name: String, _ outSize: Int, _ inSize: Int, bias: Bool = false) throws(SheafError) -> DenseLinear {
        let b: [Float]? = bias ? try values(name + ".bias", [outSize]) : nil
        return try DenseLinear(
            weight: try values(name + ".weight", [outSize, inSize]), outputSize: outSize, inputSize: inSize, bias: b,
            on: backend, name: name)
    }

    /// Decoder block `i` with dense linear layers.
    public func layer(_ i: Int) throws(SheafError) -> DecoderLayer {
        let c = config, (d, hd) = (config.hiddenSize, config.headDim)
        let p = "model.layers.\(i)."
        return DecoderLayer(
            q: try linear(p + "self_attn.q_proj", c.headCount * hd, d, bias: c.attentionBias),
            k: try linear(p + "self_attn.k_proj", c.kvHeadCount * hd, d, bias: c.attentionBias),
            v: try linear(p + "self_attn.v_proj", c.kvHeadCount * hd, d, bias: c.attentionBias),
            o: try linear(p + "self_attn.o_proj", d, c.headCount * hd),
            gate: try linear(p + "mlp.gate_proj", c.intermediateSize, d),
            up: try linear(p + "mlp.up_proj", c.intermediateSize, d),
            down: try linear(p + "mlp.down_proj", d, c.intermediateSize),
            inputNorm: try vector(p + "input_layernorm.weight", d),
            postAttentionNorm: try vector(p + "post_attention_layernorm.weight", d))
    }
}
