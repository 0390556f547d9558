#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import SheafCore

/// A GGUF metadata value: one case per GGUF value type (gguf.h `enum gguf_type`, ids 0-12).
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String), array([GGUFValue])
    case uint64(UInt64), int64(Int64), float64(Double)
    /// An array longer than `GGUFFile.maxLoadedArrayElements`, stepped over while parsing and not
    /// kept (its element type name and count): no metadata Sheaf reads is that long, and holding
    /// it would cost 24 bytes per element.
    case skippedArray(elementType: String, count: Int)

    /// The GGUF type ids of the cases, in id order.
    static let typeNames = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var array: [GGUFValue]? { if case .array(let a) = self { a } else { nil } }

    /// Any integer case whose value fits an `Int`.
    public var int: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(v)
        default: nil
        }
    }

    /// A float case, or an integer case converted (so `rope.freq_base` stored as an integer reads too).
    public var double: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: int.map(Double.init)
        }
    }

    /// Arrays of strings (tokenizer vocabularies, merges); nil if any element is not a string.
    public var stringArray: [String]? {
        guard case .array(let a) = self else { return nil }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for v in a {
            guard case .string(let s) = v else { return nil }
            out.append(s)
        }
        return out
    }

    public var intArray: [Int]? {
        guard case .array(let a) = self else { return nil }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for v in a {
            guard let i = v.int else { return nil }
            out.append(i)
        }
        return out
    }

    /// Arrays of numbers (token scores) as Float.
    public var floatArray: [Float]? {
        guard case .array(let a) = self else { return nil }
        var out: [Float] = []
        out.reserveCapacity(a.count)
        for v in a {
            guard let d = v.double else { return nil }
            out.append(Float(d))
        }
        return out
    }
}

/// A GGUF file (versions 2 and 3, little-endian), memory-mapped: opening parses and validates
/// the header, metadata and tensor infos; tensor data is paged in and dequantised on request.
///
/// Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata as (string key,
/// u32 type, value); tensor infos as (string name, u32 n_dims, u64 ne[n_dims] innermost first,
/// u32 ggml type, u64 offset); then, aligned to `general.alignment` (default 32), the data
/// section, which the offsets index. A string is a u64 byte length and UTF-8 bytes; an array a
/// u32 element type, a u64 count and the elements.
///
/// Every count and length is checked against the bytes left in the file before anything is
/// allocated, so a corrupt or hostile header fails with one line instead of a crash or a huge
/// allocation.
public final class GGUFFile: TensorStore, @unchecked Sendable {
    public let path: String
    /// 2 or 3 (version 3 only added big-endian files, which are refused).
    public let version: Int
    public let metadata: [String: GGUFValue]
    public let tensorNames: [String]
    /// The data section's alignment in bytes (`general.alignment`, default 32).
    public let alignment: Int
    /// The byte offset of the data section in the file.
    public let dataOffset: Int
    /// Tensor names in the order the file lists them.
    public let tensorNamesInFileOrder: [String]
    let entries: [String: Entry]
    let file: MappedFile

    struct Entry {
        /// ne[], innermost (contiguous) dimension first, as GGUF stores it.
        var dimensions: [Int]
        var type: GGMLType
        var elementCount: Int
        /// Absolute byte range in the file.
        var begin: Int
        var byteCount: Int
    }

    public static let defaultAlignment = 32
    /// Metadata arrays may nest (GGUF allows it; llama.cpp never writes it): a depth bound keeps
    /// a crafted file from recursing the stack away.
    public static let maxArrayDepth = 8
    /// Metadata arrays longer than this (2²² elements: 16× the largest vocabulary in use) are
    /// skipped, so parsing holds at most ~100 MB per array whatever the file claims.
    public static let maxLoadedArrayElements = 1 << 22
    public static let maxDimensions = 4

    /// `general.architecture`, e.g. "llama".
    public var architecture: String? { metadata["general.architecture"]?.string }

    /// `releasePages`: drop a tensor's mapped pages once it is read (the default; false only to
    /// measure what that saves).
    public init(path: String, releasePages: Bool = true) throws(SheafError) {
        self.path = path
        file = try MappedFile(path: path, releasesPages: releasePages)
        var r = GGUFReader(bytes: file.bytes, path: path)

        r.context = "header"
        let magic = try r.bytes(4, "the magic")
        guard magic.elementsEqual("GGUF".utf8) else {
            let shown = magic.map { (32..<127).contains($0) ? String(UnicodeScalar($0)) : "." }.joined()
            throw r.fail("not a GGUF file: magic is \"\(shown)\", expected \"GGUF\"")
        }
        let rawVersion = try r.load(UInt32.self, "the version")
        switch rawVersion {
        case 2, 3: version = Int(rawVersion)
        case 1: throw r.fail("GGUF version 1 is not supported (32-bit counts; expected version 2 or 3; convert the file with a newer llama.cpp)")
        case 0x0200_0000, 0x0300_0000: throw r.fail("big-endian GGUF is not supported (expected a little-endian version 2 or 3 file)")
        default: throw r.fail("unknown GGUF version \(rawVersion) (expected 2 or 3)")
        }
        let tensorCount = try r.load(UInt64.self, "the tensor count")
        let kvCount = try r.load(UInt64.self, "the metadata count")
        // The smallest metadata entry is 13 bytes (8-byte key length, 4-byte type, a 1-byte
        // value); the smallest tensor info 24 (8-byte name length, n_dims, type, offset).
        guard kvCount <= UInt64(r.remaining / 13) else {
            throw r.fail("metadata count \(kvCount) is impossible: \(r.remaining) bytes follow the header and each entry takes at least 13 (truncated or corrupt file)")
        }
        guard tensorCount <= UInt64(r.remaining / 24) else {
            throw r.fail("tensor count \(tensorCount) is impossible: \(r.remaining) bytes follow the header and each tensor info takes at least 24 (truncated or corrupt file)")
        }

        var metadata: [String: GGUFValue] = [:]
        metadata.reserveCapacity(Int(kvCount))
        for index in 0..<Int(kvCount) {
            r.context = "metadata entry \(index)"
            let key = try r.string("the key")
            r.context = "metadata key '\(printable(key))'"
            let type = try r.load(UInt32.self, "the value type")
            let value = try r.value(type: type, depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else { throw r.fail("duplicate key") }
        }
        self.metadata = metadata

        r.context = "metadata key 'general.alignment'"
        if let value = metadata["general.alignment"] {
            guard let a = value.int, a > 0, a & (a - 1) == 0, a <= 1 << 30 else {
                throw r.fail("alignment \(value.int.map(String.init) ?? "of a non-integer type") is not a power of two between 1 and 2^30")
            }
            alignment = a
        } else {
            alignment = Self.defaultAlignment
        }

        var infos: [(name: String, dimensions: [Int], type: GGMLType, offset: UInt64)] = []
        infos.reserveCapacity(Int(tensorCount))
        var seen = Set<String>()
        for index in 0..<Int(tensorCount) {
            r.context = "tensor info \(index)"
            let name = try r.string("the name")
            r.context = "tensor '\(printable(name))'"
            guard seen.insert(name).inserted else { throw r.fail("duplicate tensor name") }
            let nDims = try r.load(UInt32.self, "n_dims")
            guard nDims <= UInt32(Self.maxDimensions) else { throw r.fail("n_dims is \(nDims), expected at most \(Self.maxDimensions)") }
            var dimensions: [Int] = []
            for axis in 0..<Int(nDims) {
                let ne = try r.load(UInt64.self, "ne[\(axis)]")
                guard ne <= UInt64(Int64.max) else { throw r.fail("ne[\(axis)] = \(ne) is negative or beyond 2^63") }
                dimensions.append(Int(ne))
            }
            let typeID = try r.load(UInt32.self, "the ggml type")
            guard let type = GGMLType(rawValue: typeID) else {
                throw r.fail("unknown ggml type id \(typeID) (known: \(GGMLType.allCases.map { "\($0.name)=\($0.rawValue)" }.joined(separator: ", ")))")
            }
            let offset = try r.load(UInt64.self, "the data offset")
            infos.append((name, dimensions, type, offset))
        }

        // The data section starts at the next multiple of the alignment; a file without tensors
        // may end before it.
        r.context = "data section"
        let (padded, overflow) = r.offset.addingReportingOverflow(alignment - 1)
        guard !overflow else { throw r.fail("offset overflow") }
        dataOffset = padded / alignment * alignment
        let dataSize = max(0, file.bytes.count - dataOffset)

        var entries: [String: Entry] = [:]
        entries.reserveCapacity(infos.count)
        for info in infos {
            let fail = { (detail: String) in SheafError.io(path: path, detail: "tensor '\(printable(info.name))': \(detail)") }
            let shape = "ne \(info.dimensions) (\(info.type.name))"
            var count = 1
            for d in info.dimensions {
                let (product, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow else { throw fail("\(shape): element count overflows") }
                count = product
            }
            let rowLength = info.dimensions.first ?? 1
            guard rowLength % info.type.blockSize == 0, let bytes = GGMLQuant.byteCount(info.type, elements: count) else {
                throw fail("\(shape): row length \(rowLength) is not a multiple of the \(info.type.blockSize)-element block")
            }
            guard info.offset % UInt64(alignment) == 0 else {
                throw fail("data offset \(info.offset) is not a multiple of the alignment \(alignment)")
            }
            guard info.offset <= UInt64(dataSize), bytes <= dataSize - Int(info.offset) else {
                throw fail("\(shape) needs \(bytes) bytes at data offset \(info.offset), beyond the \(dataSize)-byte data section (truncated file?)")
            }
            entries[info.name] = Entry(
                dimensions: info.dimensions, type: info.type, elementCount: count, begin: dataOffset + Int(info.offset), byteCount: bytes)
        }
        // No two tensors may share bytes.
        let byBegin = entries.filter { $0.value.byteCount > 0 }.sorted { ($0.value.begin, $0.key) < ($1.value.begin, $1.key) }
        for (a, b) in zip(byBegin, byBegin.dropFirst()) where b.value.begin < a.value.begin + a.value.byteCount {
            throw SheafError.io(
                path: path,
                detail: "tensors '\(printable(a.key))' (data offset \(a.value.begin - dataOffset), \(a.value.byteCount) bytes) and '\(printable(b.key))' (data offset \(b.value.begin - dataOffset)) overlap")
        }
        self.entries = entries
        tensorNamesInFileOrder = infos.map(\.name)
        tensorNames = entries.keys.sorted()
    }

    func entry(_ name: String) throws(SheafError) -> Entry {
        guard let e = entries[name] else { throw .io(path: path, detail: "no tensor named '\(printable(name))'") }
        return e
    }

    /// Shape in PyTorch order (GGUF's ne reversed): a linear weight is [dOut, dIn].
    public func info(_ name: String) throws(SheafError) -> TensorInfo {
        let e = try entry(name)
        return TensorInfo(name: name, shape: e.dimensions.reversed(), type: e.type.name, byteCount: e.byteCount)
    }

    public func ggmlType(_ name: String) throws(SheafError) -> GGMLType { try entry(name).type }

    /// The stored bytes as they are (any type).
    public func rawBytes(_ name: String) throws(SheafError) -> [UInt8] {
        let e = try entry(name)
        defer { file.release(e.begin..<e.begin + e.byteCount) }
        return [UInt8](UnsafeRawBufferPointer(rebasing: file.bytes[e.begin..<e.begin + e.byteCount]))
    }

    #if os(Linux)
        /// How many whole pages of tensor `name`'s bytes this process has resident now (nil where
        /// /proc/self/pagemap cannot be read): a conversion leaves none (`MappedFile.release`).
        public func residentPages(_ name: String) throws(SheafError) -> (resident: Int, total: Int)? {
            let e = try entry(name)
            return file.residentPages(e.begin..<e.begin + e.byteCount)
        }
    #endif

    /// Dequantised values in the file's own row order: row-major in `info(name).shape`. Llama Q
    /// and K projections stay in GGUF's permuted row order; `LlamaPermutation.unpermute` converts.
    public func float32(_ name: String) throws(SheafError) -> [Float] {
        let e = try entry(name)
        guard e.type.isDequantizable else {
            throw .io(
                path: path,
                detail: "tensor '\(printable(name))' is \(e.type.name), which Sheaf cannot dequantise (supported: \(GGMLQuant.supported.map(\.name).joined(separator: ", ")))")
        }
        // Dequantised once: the mapped pages are not needed after this (see `MappedFile.release`).
        defer { file.release(e.begin..<e.begin + e.byteCount) }
        do {
            return try GGMLQuant.dequantize(e.type, UnsafeRawBufferPointer(rebasing: file.bytes[e.begin..<e.begin + e.byteCount]), count: e.elementCount)
        } catch {
            throw .io(path: path, detail: "tensor '\(printable(name))': \(error)")
        }
    }
}

/// A name from the file as it may appear in a one-line error: control characters escaped, and
/// cut at 120 characters (a corrupt key can be megabytes long).
func printable(_ name: String) -> String {
    var out = ""
    for scalar in name.unicodeScalars.prefix(120) {
        out += scalar.value < 0x20 || scalar.value == 0x7F ? scalar.escaped(asASCII: true) : String(scalar)
    }
    return name.unicodeScalars.count > 120 ? out + "…" : out
}

/// A bounds-checked little-endian cursor over the mapped header. `context` names what is being
/// read (the header, a metadata key, a tensor) for error messages.
struct GGUFReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset = 0
    var context = ""

    init(bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - offset }

    func fail(_ detail: String) -> SheafError { .io(path: path, detail: "GGUF \(context): \(detail)") }

    // `what` is an autoclosure: a 49k-string vocabulary should not build 49k messages.
    func need(_ count: Int, _ what: @autoclosure () -> String) throws(SheafError) {
        guard count <= remaining else {
            throw fail("truncated: \(what()) needs \(count) bytes at offset \(offset), the \(bytes.count)-byte file has \(remaining) left")
        }
    }

    mutating func bytes(_ count: Int, _ what: @autoclosure () -> String) throws(SheafError) -> UnsafeRawBufferPointer {
        try need(count, what())
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }

    mutating func load<T: FixedWidthInteger>(_ type: T.Type, _ what: @autoclosure () -> String) throws(SheafError) -> T {
        try need(MemoryLayout<T>.size, what())
        defer { offset += MemoryLayout<T>.size }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    mutating func string(_ what: @autoclosure () -> String) throws(SheafError) -> String {
        let length = try load(UInt64.self, "\(what())'s length")
        guard length <= UInt64(remaining) else {
            throw fail("\(what()) is \(length) bytes long, past the end of the file (\(remaining) bytes left at offset \(offset); truncated or corrupt file)")
        }
        // Invalid UTF-8 is repaired (U+FFFD) rather than refused: a vocabulary entry with a
        // stray byte should not make the whole model unreadable.
        return String(decoding: try bytes(Int(length), what()), as: UTF8.self)
    }

    /// The smallest encoding of one element of each value type, to bound array counts by the
    /// bytes left before allocating.
    static func minimumSize(_ type: UInt32) -> Int {
        switch type {
        case 0, 1, 7: 1
        case 2, 3: 2
        case 4, 5, 6: 4
        case 8, 10, 11, 12: 8
        default: 12  // array: element type and count
        }
    }

    mutating func value(type: UInt32, depth: Int) throws(SheafError) -> GGUFValue {
        switch type {
        case 0: return .uint8(try load(UInt8.self, "a u8"))
        case 1: return .int8(try load(Int8.self, "an i8"))
        case 2: return .uint16(try load(UInt16.self, "a u16"))
        case 3: return .int16(try load(Int16.self, "an i16"))
        case 4: return .uint32(try load(UInt32.self, "a u32"))
        case 5: return .int32(try load(Int32.self, "an i32"))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self, "an f32")))
        case 7:
            let b = try load(UInt8.self, "a bool")
            guard b <= 1 else { throw fail("bool byte is \(b) at offset \(offset - 1), expected 0 or 1") }
            return .bool(b == 1)
        case 8: return .string(try string("the string"))
        case 10: return .uint64(try load(UInt64.self, "a u64"))
        case 11: return .int64(try load(Int64.self, "an i64"))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self, "an f64")))
        case 9:
            guard depth < GGUFFile.maxArrayDepth else { throw fail("arrays nested deeper than \(GGUFFile.maxArrayDepth)") }
            let elementType = try load(UInt32.self, "the array element type")
            guard elementType <= 12 else { throw fail("unknown array element type id \(elementType) (expected 0-12)") }
            let count = try load(UInt64.self, "the array count")
            let minimum = Self.minimumSize(elementType)
            guard count <= UInt64(remaining / minimum) else {
                throw fail("array of \(count) \(GGUFValue.typeNames[Int(elementType)]) cannot fit in the \(remaining) bytes left at offset \(offset) (truncated or corrupt file)")
            }
            if count > UInt64(GGUFFile.maxLoadedArrayElements) {
                // Stepped over: fixed-size elements in one jump, others one at a time, none kept.
                let fixed: [UInt32: Int] = [0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8]
                if let size = fixed[elementType] {
                    _ = try bytes(Int(count) * size, "an array of \(count) \(GGUFValue.typeNames[Int(elementType)])")
                } else {
                    for _ in 0..<Int(count) { _ = try value(type: elementType, depth: depth + 1) }
                }
                return .skippedArray(elementType: GGUFValue.typeNames[Int(elementType)], count: Int(count))
            }
            var elements: [GGUFValue] = []
            elements.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { elements.append(try value(type: elementType, depth: depth + 1)) }
            return .array(elements)
        default:
            throw fail("unknown value type id \(type) (expected 0-12)")
        }
    }
}
