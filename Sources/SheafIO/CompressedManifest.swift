import Foundation
import SheafCore

/// `sheaf.json` of a compressed checkpoint, format 3: for every compressed linear module its
/// stored-layer kind and the tensors it uses (a tensor used by several modules, such as a basis
/// shared across layers, is stored once), as a separate block the method that made it with its
/// options and report, and the table of tensors stored quantised (any tensor, whichever kind or
/// none uses it: `quantizedTensors`). Modules not listed are dense under their HuggingFace names.
///
/// Format 2 is format 3 without the table; format 1 (Sheaf 0.1, low-rank only: `groups` of a
/// basis tensor and per-layer `.coefficients`) is read and converted on load.
public struct CompressedManifest: Codable, Sendable, Equatable {
    public static let formatName = "sheaf-compressed"
    public static let formatVersion = 3
    public static let fileName = "sheaf.json"

    /// How one linear module is stored: a kind from the stored-layer table (SheafModel's
    /// `StoredLayerKinds`: "dense", "low-rank", …) and its tensors by role, e.g.
    /// {"basis": "sheaf.bases.q_proj.layers.0-1", "coefficients": "model.layers.0.self_attn.q_proj.coefficients"}.
    public struct Module: Codable, Sendable, Equatable {
        public var kind: String
        public var tensors: [String: String]
        /// Integers a kind needs besides its tensors' shapes (a quantised module's "bits" and
        /// "group"); nil when none. Keys are lower-case words: the coders convert snake_case.
        public var attributes: [String: Int]?
        /// A head-shared module's heads in order (query heads of q and o, key/value heads of k
        /// and v): where each one's rows (q, k, v) or columns (o) are stored. nil for other kinds.
        public var heads: [HeadSource]?
        public init(kind: String, tensors: [String: String], attributes: [String: Int]? = nil, heads: [HeadSource]? = nil) {
            (self.kind, self.tensors, self.attributes, self.heads) = (kind, tensors, attributes, heads)
        }

        /// The tensors it names by role and the ones its heads read (borrowed ones included).
        public var usedTensors: Set<String> { Set(tensors.values).union((heads ?? []).map(\.tensor)) }
    }

    /// One head of a head-shared module: block `slice` (head_dim rows of a q/k/v tensor, or
    /// head_dim columns of an o tensor) of `tensor`, which may be this module's own tensor or
    /// another module's (the head it borrows).
    public struct HeadSource: Codable, Sendable, Equatable, Hashable {
        public var tensor: String
        public var slice: Int
        public init(tensor: String, slice: Int) { (self.tensor, self.slice) = (tensor, slice) }
    }

    /// The method that wrote the checkpoint: its registry name, its options and its report, each
    /// in the method's own shape.
    public struct Method: Codable, Sendable, Equatable {
        public var name: String
        public var options: JSONValue
        public var report: JSONValue
        public init(name: String, options: JSONValue, report: JSONValue) { (self.name, self.options, self.report) = (name, options, report) }
    }

    /// A (rows, cols) tensor stored group-wise quantised with the round-to-nearest codec
    /// (`RoundToNearest`): three stored tensors stand for it, `codes` U8 (rows, ⌈cols·bits/8⌉)
    /// and `minima`, `steps` F16 (rows, ⌈cols/group⌉). Readers see the tensor under its own name
    /// with `shape`, whatever kind (or none: the embedding, a dense module) reads it.
    public struct QuantizedTensor: Codable, Sendable, Equatable {
        public var shape: [Int]
        public var bits: Int
        public var group: Int
        public var codes: String
        public var minima: String
        public var steps: String
        public init(shape: [Int], bits: Int, group: Int, codes: String, minima: String, steps: String) {
            (self.shape, self.bits, self.group, self.codes, self.minima, self.steps) = (shape, bits, group, codes, minima, steps)
        }

        /// The names `compress` gives the parts of tensor `name`.
        public static func parts(of name: String) -> (codes: String, minima: String, steps: String) {
            (name + ".q_codes", name + ".q_minima", name + ".q_steps")
        }
    }

    public struct Calibration: Codable, Sendable, Equatable {
        public var protocolName: String?
        public var windows: Int
        public var length: Int
        /// Calibration text files (base names) and the SHA-256 of the joined text.
        public var files: [String]
        public var textChecksum: String
        public init(protocolName: String?, windows: Int, length: Int, files: [String], textChecksum: String) {
            (self.protocolName, self.windows, self.length, self.files, self.textChecksum) = (protocolName, windows, length, files, textChecksum)
        }
    }

    public var format = Self.formatName
    public var formatVersion = Self.formatVersion
    public var sheafVersion: String
    /// The fraction of linear parameters the user asked to remove, when the method takes one.
    public var requestedRatio: Double?
    /// 1 − (stored linear parameters) / (dense linear parameters), from the tensors written.
    public var achievedRatio: Double
    public var denseLinearParameters: Int
    /// Every distinct tensor the linear modules use, counted once, plus the dense modules' weights.
    public var storedLinearParameters: Int
    public var calibration: Calibration?
    /// The source checkpoint and the SHA-256 of its files.
    public var source: String
    public var sourceChecksum: String
    /// Module path ("model.layers.3.self_attn.q_proj") → how it is stored.
    public var modules: [String: Module]
    public var method: Method
    /// The storage `compress --dtype` chose ("f32", "f16", "bf16", "q8", "q4"): the method's float
    /// tensors and the source's untouched matrices; vectors stay F32, codes and labels keep their
    /// own types. nil in checkpoints written before it was recorded (all F32 then).
    public var dtype: String?
    /// Tensor name → how it is stored quantised; nil or empty when nothing is (formats 1 and 2).
    public var quantizedTensors: [String: QuantizedTensor]?
    /// The storage `compress --embedding-dtype` chose for the embedding (and an untied head);
    /// nil in checkpoints written before it was recorded (then as `dtype`).
    public var embeddingDtype: String?

    public init(
        sheafVersion: String, requestedRatio: Double?, achievedRatio: Double, denseLinearParameters: Int, storedLinearParameters: Int,
        calibration: Calibration?, source: String, sourceChecksum: String, modules: [String: Module], method: Method,
        dtype: String? = nil, quantizedTensors: [String: QuantizedTensor]? = nil, embeddingDtype: String? = nil
    ) {
        self.embeddingDtype = embeddingDtype
        self.dtype = dtype
        self.quantizedTensors = quantizedTensors
        self.sheafVersion = sheafVersion
        self.requestedRatio = requestedRatio
        self.achievedRatio = achievedRatio
        self.denseLinearParameters = denseLinearParameters
        self.storedLinearParameters = storedLinearParameters
        self.calibration = calibration
        self.source = source
        self.sourceChecksum = sourceChecksum
        self.modules = modules
        self.method = method
    }

    /// Every tensor the listed modules use (not HuggingFace tensors of the source layout).
    public var moduleTensors: Set<String> { Set(modules.values.flatMap(\.usedTensors)) }

    static func coders() -> (JSONEncoder, JSONDecoder) {
        let e = JSONEncoder(), d = JSONDecoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        e.keyEncodingStrategy = .convertToSnakeCase
        // An infinite error must not lose a finished run at the last step.
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        d.keyDecodingStrategy = .convertFromSnakeCase
        return (e, d)
    }

    public func encoded() throws(SheafError) -> Data {
        do { return try Self.coders().0.encode(self) } catch { throw .invalidArgument(op: "sheaf.json", detail: "cannot encode: \(error)") }
    }

    public static func load(_ path: String) throws(SheafError) -> CompressedManifest {
        guard let data = FileManager.default.contents(atPath: path) else { throw .io(path: path, detail: "cannot read") }
        return try decode(data, path: path)
    }

    public static func decode(_ data: Data, path: String) throws(SheafError) -> CompressedManifest {
        struct Header: Decodable { var format: String; var formatVersion: Int }
        try checkJSON([UInt8](data), path: path, what: fileName)
        let decoder = coders().1
        let header: Header
        do { header = try decoder.decode(Header.self, from: data) } catch let DecodingError.dataCorrupted(context) {
            throw .io(path: path, detail: "invalid sheaf.json: \(describe(context))")
        } catch {
            throw .io(path: path, detail: "invalid sheaf.json: \(error)")
        }
        guard header.format == formatName, (1...formatVersion).contains(header.formatVersion) else {
            throw .io(path: path, detail: "format '\(header.format)' version \(header.formatVersion) (this Sheaf reads '\(formatName)' 1 to \(formatVersion))")
        }
        do {
            if header.formatVersion == 1 { return try decoder.decode(FormatOne.self, from: data).converted() }
            return try decoder.decode(CompressedManifest.self, from: data)
        } catch {
            throw .io(path: path, detail: "invalid sheaf.json (format \(header.formatVersion)): \(error)")
        }
    }
}

/// Format 1, as Sheaf 0.1 wrote it: one family of low-rank modules, described by their groups.
struct FormatOne: Decodable {
    struct Group: Decodable {
        var type: String
        var layers: [Int]
        var rank: Int
        var basis: String
        var energy: Double
        var error: Double
        var refitError: Double?
        var whiteningFallback: Bool
    }
    var sheafVersion: String
    var method: String
    var requestedRatio: Double
    var achievedRatio: Double
    var denseLinearParameters: Int
    var storedLinearParameters: Int
    var groupSize: Int
    var shared: [String]
    var rankOverrides: [String: Int]
    var whitened: Bool
    var refit: Bool
    var whiteningFallbacks: Int
    var calibration: CompressedManifest.Calibration?
    var seed: UInt64
    var source: String
    var sourceChecksum: String
    var groups: [Group]

    /// The same checkpoint in format 2: each group's layers become low-rank modules that use its
    /// basis and their own `.coefficients`; the method block keeps format 1's fields.
    func converted() throws -> CompressedManifest {
        var modules: [String: CompressedManifest.Module] = [:]
        for g in groups {
            guard let type = MatrixType(rawValue: g.type) else {
                throw SheafError.invalidArgument(op: "sheaf.json", detail: "format 1 group of unknown type '\(g.type)'")
            }
            for layer in g.layers {
                let module = type.module(layer: layer)
                modules[module] = .init(kind: "low-rank", tensors: ["basis": g.basis, "coefficients": module + ".coefficients"])
            }
        }
        let options: JSONValue = .object([
            "ratio": .number(requestedRatio), "group_size": .int(groupSize), "shared": .array(shared.map(JSONValue.string)),
            "rank_overrides": .object(rankOverrides.mapValues(JSONValue.int)), "whitened": .bool(whitened), "refit": .bool(refit),
            "seed": .int(Int(clamping: seed)),
        ])
        let report: JSONValue = .object([
            "whitening_fallbacks": .int(whiteningFallbacks),
            "groups": .array(groups.map { g in
                .object([
                    "type": .string(g.type), "layers": .array(g.layers.map(JSONValue.int)), "rank": .int(g.rank), "basis": .string(g.basis),
                    "energy": .number(g.energy), "error": .number(g.error), "refit_error": g.refitError.map(JSONValue.number) ?? .null,
                    "whitening_fallback": .bool(g.whiteningFallback),
                ])
            }),
            "converted_from_format": .int(1),
        ])
        return CompressedManifest(
            sheafVersion: sheafVersion, requestedRatio: requestedRatio, achievedRatio: achievedRatio,
            denseLinearParameters: denseLinearParameters, storedLinearParameters: storedLinearParameters, calibration: calibration,
            source: source, sourceChecksum: sourceChecksum, modules: modules,
            method: .init(name: method, options: options, report: report))
    }
}
