import SheafCore

/// How a checkpoint stores its float matrices (`compress --dtype`): as a float type, or
/// group-wise quantised with the round-to-nearest codec (`RoundToNearest`: per group of `group`
/// consecutive values in a row, an F16 minimum and step and `bits`-bit codes).
public enum TensorStorage: Sendable, Equatable, CustomStringConvertible {
    /// F32, F16 or BF16.
    case float(SafetensorsDType)
    case quantized(bits: Int, group: Int)

    /// The names a user gives on the command line.
    public static let names = ["f32", "f16", "bf16", "q8", "q4"]

    /// `f32`, `f16`, `bf16`, `q8` or `q4` (the latter two in groups of `group`); nil for anything else.
    public init?(name: String, group: Int) {
        if let dtype = SafetensorsDType(floatStorage: name) {
            self = .float(dtype)
        } else if name == "q8" || name == "q4" {
            self = .quantized(bits: name == "q8" ? 8 : 4, group: group)
        } else {
            return nil
        }
    }

    /// "f16", "q8" (the group is recorded apart, in the table of quantised tensors).
    public var name: String {
        switch self {
        case .float(let dtype): dtype.storageName
        case .quantized(let bits, _): "q\(bits)"
        }
    }

    /// "f16", "q8 (groups of 64)".
    public var description: String {
        switch self {
        case .float: name
        case .quantized(_, let group): "\(name) (groups of \(group))"
        }
    }

    /// Bits a value takes, for ordering precisions: 32, 16, or the code width.
    public var bits: Int {
        switch self {
        case .float(let dtype): dtype == .F32 ? 32 : 16
        case .quantized(let bits, _): bits
        }
    }

    /// The storage of the same precision class as a source tensor stored as `type` (a safetensors
    /// or GGML type name): F32/F64 → f32, F16 → f16, BF16 → bf16, 5- to 8-bit GGML blocks → q8,
    /// 4 bits and fewer → q4 (in groups of `group`); nil for a type it does not know.
    public static func precisionClass(ofStored type: String, group: Int) -> TensorStorage? {
        switch type {
        case "F32", "F64": return .float(.F32)
        case "F16": return .float(.F16)
        case "BF16": return .float(.BF16)
        default:
            if ["Q8_0", "Q8_1", "Q8_K", "Q6_K", "Q5_0", "Q5_1", "Q5_K", "I8"].contains(type) { return .quantized(bits: 8, group: group) }
            if type.hasPrefix("Q") || type.hasPrefix("IQ") || type.hasPrefix("TQ") || type == "MXFP4" {
                return .quantized(bits: 4, group: group)
            }
            return nil
        }
    }

    /// `--embedding-dtype auto`: with `dtype` f32, f32 (a full-precision checkpoint, as asked);
    /// otherwise the source embedding's precision class (`precisionClass`), no wider than `dtype`
    /// when that is a 16-bit float (the source's own type at the same width), and no wider than
    /// f16 when `dtype` is quantised. For SmolLM2's Q8_0 embedding: q8 beside f16, bf16, q8 or
    /// q4 linear layers.
    public static func automaticEmbedding(sourceType: String, dtype: TensorStorage, group: Int) -> TensorStorage {
        if dtype == .float(.F32) { return dtype }
        let cap: TensorStorage = if case .float = dtype { dtype } else { .float(.F16) }
        guard let source = precisionClass(ofStored: sourceType, group: group) else { return cap }
        return source.bits <= cap.bits ? source : cap
    }
}
