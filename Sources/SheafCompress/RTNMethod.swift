import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// Round-to-nearest quantisation (`RoundToNearest`): the baseline SWSC is judged against at
/// equal average bits, as its paper does. Asymmetric min/max per output channel, or per group of
/// G inputs. Stores each module as a dense module whose weight is a quantised tensor (U8 packed
/// codes, F16 minima and steps; `CompressedManifest.QuantizedTensor`), whatever `--dtype` says
/// (its bits are the method's own). Checkpoints of format 2 used the "quantized" kind, still read.
public final class RTNMethod: CompressionMethod {
    public struct Options: Sendable {
        public var bits = 4
        /// Inputs per group; nil = the whole row (per output channel).
        public var groupSize: Int?
        public var matrices: [MatrixType] = MatrixType.allCases
        public init() {}
    }

    public static let options: [MethodOption] = [
        .init("bits", value: "B", help: "bits per code, 2-8 (default 4); each group adds a 16-bit minimum and step."),
        .init("group-size", value: "G", help: "inputs per quantisation group (default: the whole row, one group per output channel)."),
        .init("matrices", value: "LIST", help: "matrix types to quantise: all (default) or e.g. q,k; the rest stay dense."),
    ]

    public static let entries: [MethodEntry] = [
        MethodEntry(name: "rtn", summary: "round-to-nearest quantisation, asymmetric per channel or group (a baseline)", options: options) {
            a, config in
            var o = Options()
            if let b = try a.int("bits") { o.bits = b }
            o.groupSize = try a.int("group-size")
            if let m = try MatrixSelection.parse(a) { o.matrices = m }
            return try RTNMethod(options: o, config: config)
        }
    ]

    public let options: Options
    private var modules: [String: CompressedManifest.Module] = [:]
    private var tensors: [(name: String, value: Matrix<Float>)] = []
    private var quantized: [String: (entry: CompressedManifest.QuantizedTensor, parts: [TensorToWrite])] = [:]
    private var errors: [(type: MatrixType, relative: Double, weighted: Double)] = []
    private let config: ModelConfig

    public init(options: Options, config: ModelConfig) throws(SheafError) {
        guard (2...8).contains(options.bits) else { throw .invalidArgument(op: "compress rtn", detail: "--bits must be 2 to 8, got \(options.bits)") }
        if let g = options.groupSize, g < 1 { throw .invalidArgument(op: "compress rtn", detail: "--group-size must be at least 1, got \(g)") }
        guard !options.matrices.isEmpty else { throw .invalidArgument(op: "compress rtn", detail: "--matrices names no matrix type") }
        self.options = options
        self.config = config
    }

    public var name: String { "rtn" }
    /// The Grams only weigh the reported error.
    public var statistics: CalibrationStatistics { .inputGrams }
    public var requestedRatio: Double? { nil }
    public var recordedOptions: JSONValue {
        .object([
            "bits": .int(options.bits), "group_size": options.groupSize.map(JSONValue.int) ?? .null,
            "matrices": .array(options.matrices.map { .string($0.rawValue) }),
        ])
    }

    func group(_ t: MatrixType) -> Int { options.groupSize.map { min($0, t.shape(config).dIn) } ?? t.shape(config).dIn }

    public func layerReady(_ layer: Int, grams: [LinearInput: Matrix<Double>]?, context: CompressionContext) throws(SheafError) {
        for t in options.matrices.sorted(by: { MatrixType.allCases.firstIndex(of: $0)! < MatrixType.allCases.firstIndex(of: $1)! }) {
            let w = try context.weight(t, layer: layer)
            let g = group(t)
            let q = RoundToNearest.quantize(w, bits: options.bits, group: g)
            let approx = RoundToNearest.dequantize(
                codes: q.codes.values, minima: q.minima.values, steps: q.steps.values, dOut: w.rows, dIn: w.cols, bits: options.bits, group: g)
            let (relative, weighted) = try MatrixSelection.errors(w, try Matrix(rows: w.rows, cols: w.cols, values: approx).asDouble, gram: grams?[t.input])
            errors.append((t, relative, weighted))
            // A dense module whose weight is stored quantised (the checkpoint's table of quantised
            // tensors): it stays codes in memory, and counts as the parameters it is.
            let module = t.module(layer: layer), name = module + ".weight"
            let (entry, parts, _) = try CompressedManifest.QuantizedTensor.encode(name, w, bits: options.bits, group: g)
            tensors.append((name, try Matrix(rows: w.rows, cols: w.cols, values: approx)))
            quantized[name] = (entry, parts)
            modules[module] = .init(kind: DenseKind.kindName, tensors: ["weight": name])
        }
    }

    public func finish(context: CompressionContext) throws(SheafError) -> MethodOutput {
        var rows: [[String]] = [], types: [JSONValue] = []
        var totalBits = 0.0, totalWeights = 0.0
        for t in MatrixType.allCases {
            let mine = errors.filter { $0.type == t }
            guard !mine.isEmpty else { continue }
            let (dOut, dIn) = t.shape(config), n = Double(mine.count)
            let bits = RoundToNearest.averageBits(dOut: dOut, dIn: dIn, bits: options.bits, group: group(t))
            totalBits += bits * Double(dOut * dIn) * n
            totalWeights += Double(dOut * dIn) * n
            let rel = mine.map(\.relative).reduce(0, +) / n, wtd = mine.map(\.weighted).reduce(0, +) / n
            rows.append([t.rawValue, "\(mine.count)", "\(group(t))", String(format: "%.3f", bits), scientific(rel), scientific(wtd)])
            types.append(.object([
                "type": .string(t.rawValue), "group_size": .int(group(t)), "bits": .number(bits),
                "relative_errors": .array(mine.map { .number($0.relative) }), "weighted_errors": .array(mine.map { .number($0.weighted) }),
            ]))
        }
        let average = totalWeights > 0 ? totalBits / totalWeights : 0
        let report = MethodReport(
            columns: ["type", "layers", "group", "bits", "‖W−Ŵ‖/‖W‖", "weighted error"], rows: rows,
            notes: ["average bits per compressed weight \(String(format: "%.3f", average)) (\(options.bits)-bit codes, 16-bit minimum and step per group)"],
            json: .object(["average_bits": .number(average), "types": .array(types)]))
        var output = MethodOutput(modules: modules, tensors: tensors, report: report)
        output.quantized = quantized
        return output
    }
}
