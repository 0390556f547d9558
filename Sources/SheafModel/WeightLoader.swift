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
    /// Module path → basis tensor of a compressed checkpoint's factored layers (empty for dense).
    let basisByModule: [String: String]
    /// Bases uploaded so far, by tensor name: each shared basis is uploaded once for its group.
    private let bases = BasisCache()

    final class BasisCache: @unchecked Sendable {
        var views: [String: MatrixView] = [:]
        var scratch: Scratch?
    }

    public init(files: ModelFiles, backend: any Backend) {
        self.files = files
        self.backend = backend
        basisByModule = files.manifest?.basisByModule ?? [:]
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

    /// Linear layer `name` (a module path): dense from `name.weight`, or, in a compressed
    /// checkpoint, factored from `name.coefficients` and its group's basis.
    func linear(_ name: String, _ outSize: Int, _ inSize: Int, bias: Bool = false) throws(SheafError) -> any LinearLayer {
        let b: [Float]? = bias ? try values(name + ".bias", [outSize]) : nil
        if let basisName = basisByModule[name] {
            let rank = try files.info(basisName).shape.first ?? 0
            var owns = false
            if bases.views[basisName] == nil {
                let stored = try Matrix(rows: rank, cols: inSize, values: try values(basisName, [rank, inSize]))
                bases.views[basisName] = try backend.upload(stored.transposed, label: basisName)
                owns = true
            }
            if bases.scratch == nil { bases.scratch = Scratch(on: backend) }
            return try LowRankLinear(
                basis: bases.views[basisName]!, coefficientsT: try values(name + ".coefficients", [outSize, rank]),
                outputSize: outSize, bias: b, ownsBasis: owns, scratch: bases.scratch!, on: backend, name: name)
        }
        return try DenseLinear(
            weight: try values(name + ".weight", [outSize, inSize]), outputSize: outSize, inputSize: inSize, bias: b,
            on: backend, name: name)
    }

    /// Decoder block `i` as stored (dense, or factored in a compressed checkpoint).
    public func layer(_ i: Int) throws(SheafError) -> DecoderLayer {
        try layer(i, replacing: { _ in nil })
    }

    /// Decoder block `i`, where `replace(modulePath)` may supply a linear layer in place of the
    /// stored one (e.g. "model.layers.3.mlp.up_proj"); nil takes it from the files.
    public func layer(_ i: Int, replacing replace: (String) throws(SheafError) -> (any LinearLayer)?) throws(SheafError) -> DecoderLayer {
        let c = config, (d, hd) = (config.hiddenSize, config.headDim)
        let p = "model.layers.\(i)."
        func make(_ name: String, _ outSize: Int, _ inSize: Int, bias: Bool = false) throws(SheafError) -> any LinearLayer {
            if let replaced = try replace(p + name) { return replaced }
            return try linear(p + name, outSize, inSize, bias: bias)
        }
        return DecoderLayer(
            q: try make("self_attn.q_proj", c.headCount * hd, d, bias: c.attentionBias),
            k: try make("self_attn.k_proj", c.kvHeadCount * hd, d, bias: c.attentionBias),
            v: try make("self_attn.v_proj", c.kvHeadCount * hd, d, bias: c.attentionBias),
            o: try make("self_attn.o_proj", d, c.headCount * hd),
            gate: try make("mlp.gate_proj", c.intermediateSize, d),
            up: try make("mlp.up_proj", c.intermediateSize, d),
            down: try make("mlp.down_proj", d, c.intermediateSize),
            inputNorm: try vector(p + "input_layernorm.weight", d),
            postAttentionNorm: try vector(p + "post_attention_layernorm.weight", d))
    }

    /// A tensor's values by HuggingFace name, shape- and NaN-checked.
    public func hostValues(_ name: String, shape: [Int]) throws(SheafError) -> [Float] { try values(name, shape) }
}
