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
    /// What the modules of a compressed checkpoint share (uploaded bases, one scratch).
    let stored: StoredLayerContext

    public init(files: ModelFiles, backend: any Backend) {
        self.files = files
        self.backend = backend
        stored = StoredLayerContext(files: files, backend: backend)
    }

    func values(_ name: String, _ shape: [Int]) throws(SheafError) -> [Float] { try stored.values(name, shape) }

    /// The token embedding (vocabulary, hidden) on the host.
    func embedding() throws(SheafError) -> [Float] {
        try values("model.embed_tokens.weight", [config.vocabularySize, config.hiddenSize])
    }

    /// A (1, n) vector on the backend (norm weights).
    func vector(_ name: String, _ n: Int) throws(SheafError) -> MatrixView {
        try MatrixView(backend.upload(try values(name, [n]), label: name), rows: 1, cols: n)
    }

    /// Linear layer `type` of layer `i`: dense from `module.weight`, or, in a compressed checkpoint,
    /// as its stored-layer kind builds it from the tensors the manifest names.
    func linear(_ type: MatrixType, layer i: Int) throws(SheafError) -> any LinearLayer {
        let module = type.module(layer: i), shape = type.shape(config)
        let bias: [Float]? = type.hasBias(config) ? try values(module + ".bias", [shape.dOut]) : nil
        if let entry = files.manifest?.modules[module] {
            let kind = try StoredLayerKinds.kind(of: entry, module: module, in: files.path)
            return try kind.layer(entry, module: module, shape: shape, bias: bias, context: stored)
        }
        return try stored.denseLinear(module + ".weight", module: module, shape: shape, bias: bias)
    }

    /// Decoder block `i` as stored (dense, or compressed in a compressed checkpoint).
    public func layer(_ i: Int) throws(SheafError) -> DecoderLayer {
        try layer(i, replacing: { _ in nil })
    }

    /// Decoder block `i`, where `replace(type)` may supply a linear layer in place of the stored
    /// one; nil takes it from the files.
    public func layer(_ i: Int, replacing replace: (MatrixType) throws(SheafError) -> (any LinearLayer)?) throws(SheafError) -> DecoderLayer {
        var linears: [MatrixType: any LinearLayer] = [:]
        for t in MatrixType.allCases {
            if let replaced = try replace(t) { linears[t] = replaced } else { linears[t] = try linear(t, layer: i) }
        }
        let p = "model.layers.\(i).", d = config.hiddenSize
        return DecoderLayer(
            q: linears[.q]!, k: linears[.k]!, v: linears[.v]!, o: linears[.o]!, gate: linears[.gate]!, up: linears[.up]!,
            down: linears[.down]!, inputNorm: try vector(p + "input_layernorm.weight", d),
            postAttentionNorm: try vector(p + "post_attention_layernorm.weight", d))
    }

    /// The output head (vocabulary, hidden), dense from `lm_head.weight`, or, `tied`, from the
    /// embedding; in its stored type.
    func outputHead(tied: Bool) throws(SheafError) -> DenseLinear {
        let (v, d) = (config.vocabularySize, config.hiddenSize)
        return try stored.denseLinear(
            tied ? "model.embed_tokens.weight" : "lm_head.weight", module: tied ? "tied head" : "lm_head", shape: (v, d), bias: nil)
    }

    /// A tensor's values by HuggingFace name, shape- and NaN-checked.
    public func hostValues(_ name: String, shape: [Int]) throws(SheafError) -> [Float] { try values(name, shape) }
}
