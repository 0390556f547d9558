import Foundation
import SheafCore

/// `sheaf.json` of a compressed checkpoint: how it was made, and which stored tensors form each
/// factored linear layer. A factored layer `P` (e.g. `model.layers.3.self_attn.q_proj`) stores
/// its coefficients as `P.coefficients` (outputs, rank); its basis (rank, inputs) is the tensor
/// its group names, stored once for every layer of the group. Both are in PyTorch orientation
/// (the weights of two chained `nn.Linear`s), so y = x·basisᵀ·coefficientsᵀ.
public struct CompressedManifest: Codable, Sendable, Equatable {
    public static let formatName = "sheaf-compressed"
    public static let formatVersion = 1
    public static let fileName = "sheaf.json"

    /// One shared basis: a matrix type over consecutive layers.
    public struct Group: Codable, Sendable, Equatable {
        /// Matrix type, e.g. "q_proj".
        public var type: String
        public var layers: [Int]
        public var rank: Int
        /// Name of the basis tensor, (rank, inputs).
        public var basis: String
        /// Energy kept: Σ_{j<rank} σ_j² / Σ σ_j² of the whitened stack (of the plain weights for
        /// the unwhitened `svd` method).
        public var energy: Double
        /// Calibration-weighted reconstruction error Σ_i ‖X_i(W_i − B·C_i)ᵀ‖² / Σ_i ‖X_i W_iᵀ‖²
        /// over the group's layers, with the dense model's calibration inputs.
        public var error: Double
        /// After a coefficient refit, the error with the inputs of the compressed model.
        public var refitError: Double?
        /// Whether the group Gram needed the (−λmin + ε)·I shift to factor.
        public var whiteningFallback: Bool

        public init(type: String, layers: [Int], rank: Int, basis: String, energy: Double, error: Double, refitError: Double?,
                    whiteningFallback: Bool) {
            (self.type, self.layers, self.rank, self.basis) = (type, layers, rank, basis)
            (self.energy, self.error, self.refitError, self.whiteningFallback) = (energy, error, refitError, whiteningFallback)
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
    /// "basis-sharing", "svd-llm" or "svd".
    public var method: String
    public var requestedRatio: Double
    /// 1 − (stored linear parameters) / (dense linear parameters), from the tensors written.
    public var achievedRatio: Double
    public var denseLinearParameters: Int
    public var storedLinearParameters: Int
    public var groupSize: Int
    /// Matrix types whose basis is shared by `groupSize` layers; the others have one per layer.
    public var shared: [String]
    /// Rank overrides given by the user (type → rank).
    public var rankOverrides: [String: Int]
    public var whitened: Bool
    public var refit: Bool
    public var whiteningFallbacks: Int
    public var calibration: Calibration?
    public var seed: UInt64
    /// The source checkpoint and the SHA-256 of its files.
    public var source: String
    public var sourceChecksum: String
    public var groups: [Group]

    public init(
        sheafVersion: String, method: String, requestedRatio: Double, achievedRatio: Double, denseLinearParameters: Int,
        storedLinearParameters: Int, groupSize: Int, shared: [String], rankOverrides: [String: Int], whitened: Bool, refit: Bool,
        whiteningFallbacks: Int, calibration: Calibration?, seed: UInt64, source: String, sourceChecksum: String, groups: [Group]
    ) {
        self.sheafVersion = sheafVersion
        self.method = method
        self.requestedRatio = requestedRatio
        self.achievedRatio = achievedRatio
        self.denseLinearParameters = denseLinearParameters
        self.storedLinearParameters = storedLinearParameters
        self.groupSize = groupSize
        self.shared = shared
        self.rankOverrides = rankOverrides
        self.whitened = whitened
        self.refit = refit
        self.whiteningFallbacks = whiteningFallbacks
        self.calibration = calibration
        self.seed = seed
        self.source = source
        self.sourceChecksum = sourceChecksum
        self.groups = groups
    }

    /// HF module path of a matrix type in layer i, e.g. "model.layers.3.self_attn.q_proj".
    public static func modulePath(layer: Int, type: String) -> String {
        let block = ["q_proj", "k_proj", "v_proj", "o_proj"].contains(type) ? "self_attn" : "mlp"
        return "model.layers.\(layer).\(block).\(type)"
    }

    /// Module path → basis tensor name, for every factored linear layer.
    public var basisByModule: [String: String] {
        var map: [String: String] = [:]
        for g in groups { for i in g.layers { map[Self.modulePath(layer: i, type: g.type)] = g.basis } }
        return map
    }

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
        let m: CompressedManifest
        do { m = try coders().1.decode(CompressedManifest.self, from: data) } catch {
            throw .io(path: path, detail: "invalid sheaf.json: \(error)")
        }
        guard m.format == formatName, m.formatVersion <= formatVersion else {
            throw .io(path: path, detail: "format '\(m.format)' version \(m.formatVersion) (this Sheaf reads '\(formatName)' up to \(formatVersion))")
        }
        return m
    }
}
