import SheafCore

/// The linear layers of a Llama-family decoder block: the one table of which matrices a layer
/// has, their shapes, the calibration input each reads, and their attention-head slices. The
/// weight loader, the calibration, the parameter count and the compression methods all read it.
public enum MatrixType: String, CaseIterable, Sendable, Codable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj", gate = "gate_proj", up = "up_proj", down = "down_proj"

    /// The HuggingFace sub-module that holds it: "self_attn" or "mlp".
    public var block: String { [.q, .k, .v, .o].contains(self) ? "self_attn" : "mlp" }

    /// Which calibration Gram sees this matrix's input: q, k and v share one, gate and up another.
    public var input: LinearInput {
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

    /// "model.layers.3.self_attn.q_proj".
    public func module(layer: Int) -> String { "model.layers.\(layer).\(block).\(rawValue)" }

    /// The (layer, type) of a module path written by `module(layer:)`, or nil.
    public static func parse(module: String) -> (layer: Int, type: MatrixType)? {
        let parts = module.split(separator: ".")
        guard parts.count == 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]),
            let type = MatrixType(rawValue: String(parts[4])), type.block == parts[3]
        else { return nil }
        return (layer, type)
    }

    /// Accepts "q", "q_proj", "gate", "gate_proj", …
    public init?(name: String) {
        if let t = MatrixType(rawValue: name) { self = t; return }
        if let t = MatrixType(rawValue: name + "_proj") { self = t; return }
        return nil
    }

    /// The slices of W that belong to one attention head, for head-wise sharing: q's rows of
    /// query head h, k's and v's rows of key/value group g, o's columns of query head h (the
    /// columns its attention output feeds). nil for the MLP matrices.
    public func headSlices(_ c: ModelConfig) -> HeadSlices? {
        switch self {
        case .q: HeadSlices(axis: .rows, count: c.headCount, width: c.headDim)
        case .k, .v: HeadSlices(axis: .rows, count: c.kvHeadCount, width: c.headDim)
        case .o: HeadSlices(axis: .columns, count: c.headCount, width: c.headDim)
        case .gate, .up, .down: nil
        }
    }

    /// The rank that removes a fraction `ratio` of a (dOut, dIn) matrix shared by n layers
    /// (BENCHMARK.md): k = floor(dIn·dOut·n·(1 − r) / (dIn + n·dOut)), at most min(dIn, n·dOut).
    public static func rank(dIn: Int, dOut: Int, layers n: Int, ratio: Double) -> Int {
        let k = Int((Double(dIn * dOut * n) * (1 - ratio) / Double(dIn + n * dOut)).rounded(.down))
        return min(k, dIn, n * dOut)
    }
}

/// Head h of a matrix: `width` consecutive rows (or columns) starting at h·width. Query head h
/// reads key/value group h / (headCount / kvHeadCount) (grouped-query attention).
public struct HeadSlices: Sendable, Equatable {
    public enum Axis: String, Sendable { case rows, columns }
    public var axis: Axis
    public var count: Int
    public var width: Int

    public func range(_ head: Int) -> Range<Int> { head * width..<(head + 1) * width }
}

/// The distinct inputs of a block's linear layers, each with its own calibration Gram.
public enum LinearInput: String, CaseIterable, Sendable, Codable {
    /// Input of q, k, v: the attention RMSNorm output, (hidden, hidden).
    case attention
    /// Input of o: the attention output, (heads·headDim, heads·headDim).
    case attentionOutput
    /// Input of gate and up: the MLP RMSNorm output, (hidden, hidden).
    case mlp
    /// Input of down: silu(gate)·up, (intermediate, intermediate).
    case mlpDown

    /// The Gram's side: the input width of the matrices that read it.
    public func width(_ c: ModelConfig) -> Int {
        MatrixType.allCases.first { $0.input == self }!.shape(c).dIn
    }
}

extension ModelConfig {
    /// Parameters of the decoder blocks' linear layers (q, k, v, o, gate, up, down): the
    /// denominator of the compression ratio (see BENCHMARK.md).
    public var linearParameterCount: Int {
        layerCount * MatrixType.allCases.reduce(0) { $0 + $1.shape(self).dOut * $1.shape(self).dIn }
    }
}
