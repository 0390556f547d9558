import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// A compression method: given the model, the calibration statistics it asked for and its own
/// options, it decides how each linear module is stored. Adding one is one file (a type that
/// conforms, and its `MethodEntry`) plus one line in `MethodRegistry.standard`; the driver
/// (`Compressor`), the checkpoint, the loader, the export and the CLI know only this protocol.
///
/// The driver calls `layerReady` once per decoder layer, in order, as soon as that layer's
/// statistics are complete (so a method can factor and drop them: memory holds one group's
/// worth), then `finish` once.
public protocol CompressionMethod: AnyObject {
    /// The registry name (`--method`).
    var name: String { get }
    /// What the shared calibration driver must collect.
    var statistics: CalibrationStatistics { get }
    /// The fraction of linear parameters the user asked to remove, when the method takes one.
    var requestedRatio: Double? { get }
    /// The options as recorded in sheaf.json.
    var recordedOptions: JSONValue { get }
    func layerReady(_ layer: Int, grams: [LinearInput: Matrix<Double>]?, context: CompressionContext) throws(SheafError)
    func finish(context: CompressionContext) throws(SheafError) -> MethodOutput
}

/// What the calibration driver collects for a method.
public enum CalibrationStatistics: Sendable, Equatable {
    /// Nothing: the method works on the weights alone.
    case none
    /// Per layer, the Float64 Gram XᵀX of each distinct linear input (`LinearInput`). A head's
    /// block (the o-proj input of query head h, for head-wise sharing) is the diagonal block of
    /// the attention-output Gram at `MatrixType.o.headSlices(config).range(h)`.
    case inputGrams
}

/// What a method hands back: how each module it compressed is stored, the new tensors, and its report.
public struct MethodOutput: Sendable {
    /// Module path → stored-layer kind and tensors. Modules absent stay dense.
    public var modules: [String: CompressedManifest.Module]
    /// The tensors the modules name, by name, each once (Float32, row-major, PyTorch orientation).
    public var tensors: [(name: String, value: Matrix<Float>)]
    /// How a tensor is stored when not as F32: F16 factors and centroids, U8/U16 labels and codes
    /// (whose values must then be integers in range).
    public var storedTypes: [String: SafetensorsDType]
    public var report: MethodReport
    /// Files written into the checkpoint folder beside the model (a method's pictures), by name.
    public var files: [String: Data]
    /// Tensors stored quantised (`stored(as:)` a quantised storage), by name: the table entry and
    /// the parts to write in its place. `tensors` then hold the values their codes stand for.
    public var quantized: [String: (entry: CompressedManifest.QuantizedTensor, parts: [TensorToWrite])] = [:]

    public init(
        modules: [String: CompressedManifest.Module], tensors: [(name: String, value: Matrix<Float>)],
        storedTypes: [String: SafetensorsDType] = [:], report: MethodReport, files: [String: Data] = [:]
    ) {
        (self.modules, self.tensors, self.storedTypes, self.report, self.files) = (modules, tensors, storedTypes, report, files)
    }
}

extension MethodOutput {
    /// The output as a checkpoint with storage `storage` holds it: each tensor the method left to
    /// the default F32 rounded to F16/BF16, or quantised (its values replaced by those its codes
    /// stand for, its parts kept for the writer), so that whatever reads this output afterwards
    /// (the checkpoint, its parameter counts, a test) sees the values the file holds; tensors with
    /// a stored type of their own (codes, labels, a method's F16 centroids) or quantised by the
    /// method itself (RTN's weights, at its own bits) stay as they are. A
    /// finite value that an F16 cannot hold is refused by tensor name before anything is written.
    public func stored(as storage: TensorStorage) throws(SheafError) -> MethodOutput {
        var out = self
        switch storage {
        case .float(let dtype):
            guard [.F32, .F16, .BF16].contains(dtype) else {
                throw .invalidArgument(op: "compress", detail: "float tensors cannot be stored as \(dtype.rawValue) (f32, f16 or bf16)")
            }
            guard dtype != .F32 else { return self }
            for (k, t) in tensors.enumerated() where storedTypes[t.name] == nil && quantized[t.name] == nil {
                let bits = try dtype.halfBits(t.value.values, tensor: t.name)
                out.tensors[k].value.values = dtype == .F16 ? bits.map { HalfFloat.f16ToFloat($0) } : bits.map { HalfFloat.bf16ToFloat($0) }
                out.storedTypes[t.name] = dtype
            }
        case .quantized(let bits, let group):
            for (k, t) in tensors.enumerated() where storedTypes[t.name] == nil && quantized[t.name] == nil {
                let (entry, parts, back) = try CompressedManifest.QuantizedTensor.encode(t.name, t.value, bits: bits, group: group)
                out.tensors[k].value.values = back
                out.quantized[t.name] = (entry, parts)
            }
        }
        return out
    }
}

/// A method's report: a table the CLI prints as it is (one row per matrix type and group, or
/// per layer and head: the method chooses), lines under it, and the same as JSON for sheaf.json
/// and `--json`.
public struct MethodReport: Sendable {
    public var columns: [String]
    public var rows: [[String]]
    public var notes: [String]
    public var json: JSONValue

    public init(columns: [String], rows: [[String]], notes: [String] = [], json: JSONValue) {
        (self.columns, self.rows, self.notes, self.json) = (columns, rows, notes, json)
    }
}

/// What a method works with: the source model, its weights, the backend, the calibration
/// windows and a progress sink.
public struct CompressionContext {
    public let files: ModelFiles
    public let loader: WeightLoader
    public let backend: any Backend
    public let windows: [[Int32]]
    public let progress: (String) -> Void
    /// The Gram cache and this calibration's key in it, when the Grams are cached: a method may
    /// keep its own measurements beside them (`GramCache.extra`).
    public var cache: GramCache?
    public var gramKey: String?
    public var config: ModelConfig { files.config }

    /// W of `type` in layer `layer` (dOut, dIn), shape- and NaN-checked.
    public func weight(_ type: MatrixType, layer: Int) throws(SheafError) -> Matrix<Float> {
        let (dOut, dIn) = type.shape(config)
        return try Matrix(rows: dOut, cols: dIn, values: try loader.hostValues(type.module(layer: layer) + ".weight", shape: [dOut, dIn]))
    }
}

// MARK: options

/// One option a method takes on the command line: `--name VALUE`, or a flag when `value` is nil.
public struct MethodOption: Sendable {
    public var name: String
    /// The value's placeholder in the help ("R", "TYPE=K"); nil for a flag.
    public var value: String?
    public var help: String
    /// Whether it may be given more than once (each value kept).
    public var repeatable: Bool

    public init(_ name: String, value: String?, help: String, repeatable: Bool = false) {
        (self.name, self.value, self.help, self.repeatable) = (name, value, help, repeatable)
    }
}

/// A malformed method option (not a number, an unknown matrix type): a usage error, exit code 2
/// in the CLI. Values that parse but do not fit the model are `SheafError.invalidArgument`.
public struct MethodOptionError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The values of a method's options as given.
public struct MethodArguments: Sendable {
    public var values: [String: [String]]
    public var flags: Set<String>

    public init(values: [String: [String]] = [:], flags: Set<String> = []) { (self.values, self.flags) = (values, flags) }

    /// The last value of `--name`.
    public func value(_ name: String) -> String? { values[name]?.last }
    public func all(_ name: String) -> [String] { values[name] ?? [] }
    public func flag(_ name: String) -> Bool { flags.contains(name) }

    public func int(_ name: String) throws(MethodOptionError) -> Int? {
        guard let v = value(name) else { return nil }
        guard let n = Int(v) else { throw MethodOptionError("--\(name) expects an integer, got '\(v)'") }
        return n
    }

    public func double(_ name: String, expecting: String) throws(MethodOptionError) -> Double? {
        guard let v = value(name) else { return nil }
        guard let x = Double(v) else { throw MethodOptionError("--\(name) expects \(expecting), got '\(v)'") }
        return x
    }

    /// A comma-separated list of matrix types ("q,k,v" or "q_proj,…").
    public func matrixTypes(_ name: String) throws(MethodOptionError) -> [MatrixType]? {
        guard let list = value(name) else { return nil }
        var types: [MatrixType] = []
        for item in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            guard let t = MatrixType(name: item) else {
                throw MethodOptionError("--\(name): '\(item)' is not a linear layer of this architecture (\(MatrixType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            types.append(t)
        }
        return types
    }
}

// MARK: the registry

/// A registry line: a method's name, one-line summary, options, and how to make it from parsed
/// options for a model (validating them: every refusal one line naming the option).
public struct MethodEntry: Sendable {
    public let name: String
    public let summary: String
    public let options: [MethodOption]
    public let make: @Sendable (MethodArguments, ModelConfig) throws -> any CompressionMethod
    /// For a method that can aim at a parameter budget (`sheaf sweep`): the arguments that ask
    /// it to remove the fraction R of the linear parameters, given the other arguments. nil for
    /// methods whose budget is not in parameters (bits).
    public let budget: (@Sendable (Double, MethodArguments, ModelConfig) throws -> MethodArguments)?

    public init(
        name: String, summary: String, options: [MethodOption],
        budget: (@Sendable (Double, MethodArguments, ModelConfig) throws -> MethodArguments)? = nil,
        make: @escaping @Sendable (MethodArguments, ModelConfig) throws -> any CompressionMethod
    ) {
        (self.name, self.summary, self.options, self.budget, self.make) = (name, summary, options, budget, make)
    }
}

/// The compression methods by name: the CLI lists them, and their options, from here.
public struct MethodRegistry: Sendable {
    public var entries: [MethodEntry]

    public init(entries: [MethodEntry]) { self.entries = entries }

    /// Every method Sheaf ships.
    public static let standard = MethodRegistry(entries: WhitenedSVDMethod.entries + SWSCMethod.entries + RTNMethod.entries + HeadSharingMethod.entries)

    public var names: [String] { entries.map(\.name) }

    public func entry(_ name: String) -> MethodEntry? { entries.first { $0.name == name } }

    /// Every option name of every method, for a parser that must know them all.
    public var optionNames: Set<String> { Set(entries.flatMap { $0.options.map(\.name) }) }
}
