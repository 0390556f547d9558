import SheafCore
import SheafIO
import SheafModel

/// The seven linear layers of a Llama-family decoder block, by their HuggingFace names.
public enum MatrixType: String, CaseIterable, Sendable, Codable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj", gate = "gate_proj", up = "up_proj", down = "down_proj"

    /// Which calibration Gram sees this matrix's input: q, k and v share one, gate and up another.
    public var input: LayerGrams.Input {
        switch self {
        case .q, .k, .v: .attention
        case .o: .attentionOutput
        case .gate, .up: .mlp
        case .down: .mlpDown
        }
    }

    /// (outputs, inputs) of W in PyTorch orientation.
    public func shape(_ c: ModelConfig) -> (dOut: Int, dIn: Int) {
        switch self {
        case .q: (c.headCount * c.headDim, c.hiddenSize)
        case .k, .v: (c.kvHeadCount * c.headDim, c.hiddenSize)
        case .o: (c.hiddenSize, c.headCount * c.headDim)
        case .gate, .up: (c.intermediateSize, c.hiddenSize)
        case .down: (c.hiddenSize, c.intermediateSize)
        }
    }

    public func hasBias(_ c: ModelConfig) -> Bool { c.attentionBias && [.q, .k, .v].contains(self) }

    /// "model.layers.i.self_attn.q_proj".
    public func module(layer: Int) -> String { CompressedManifest.modulePath(layer: layer, type: rawValue) }

    /// Accepts "q", "q_proj", "gate", "gate_proj", …
    public init?(name: String) {
        if let t = MatrixType(rawValue: name) { self = t; return }
        if let t = MatrixType(rawValue: name + "_proj") { self = t; return }
        return nil
    }

    /// The rank that removes a fraction `ratio` of a (dOut, dIn) matrix shared by n layers
    /// (BENCHMARK.md): k = floor(dIn·dOut·n·(1 − r) / (dIn + n·dOut)), at most min(dIn, n·dOut).
    public static func rank(dIn: Int, dOut: Int, layers n: Int, ratio: Double) -> Int {
        let k = Int((Double(dIn * dOut * n) * (1 - ratio) / Double(dIn + n * dOut)).rounded(.down))
        return min(k, dIn, n * dOut)
    }
}
