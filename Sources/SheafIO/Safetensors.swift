import Foundation
import SheafCore

/// Element types of the safetensors format that Sheaf reads.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, U16, I8, U8, BOOL

    /// The float storage a user names on the command line (`--dtype f32|f16|bf16`).
    public static let floatStorageNames: [(name: String, dtype: SafetensorsDType)] = [("f32", .F32), ("f16", .F16), ("bf16", .BF16)]

    /// `f32`, `f16` or `bf16` → F32, F16, BF16; nil for anything else.
    public init?(floatStorage name: String) {
        guard let found = Self.floatStorageNames.first(where: { $0.name == name }) else { return nil }
        self = found.dtype
    }

    /// The command-line name of a float storage type (`f16`), else the dtype's own name.
    public var storageName: String { Self.floatStorageNames.first { $0.dtype == self }?.name ?? rawValue }

    /// `values` rounded to this 16-bit float type (F16 or BF16; nearest even) as bit patterns. A
    /// finite value beyond the type's range (±65504 for F16) would become an infinity, which every
    /// reader refuses: it is refused here, naming `tensor` and the element.
    public func halfBits(_ values: [Float], tensor: String) throws(SheafError) -> [UInt16] {
        guard self == .F16 || self == .BF16 else {
            throw .invalidArgument(op: "round \(tensor)", detail: "\(rawValue) is not a 16-bit float type")
        }
        let isF16 = self == .F16
        let bits = isF16 ? values.map { HalfFloat.floatToF16($0) } : values.map { HalfFloat.floatToBF16($0) }
        let overflows = { (i: Int) -> Bool in
            values[i].isFinite && !(isF16 ? HalfFloat.f16ToFloat(bits[i]) : HalfFloat.bf16ToFloat(bits[i])).isFinite
        }
        if let bad = values.indices.first(where: overflows) {
            throw .invalidArgument(
                op: "store as \(storageName)",
                detail: "tensor '\(tensor)': value \(values[bad]) at element \(bad) is beyond the range of \(rawValue)"
                    + (isF16 ? " (±65504): store it as bf16 or f32" : ""))
        }
        return bits
    }

    public var byteSize: Int {
        switch self {
        case .F64, .I64: 8
        case .F32, .I32: 4
        case .F16, .BF16, .U16: 2
        case .I8, .U8, .BOOL: 1
        }
    }
}

/// One `.safetensors` file, memory-mapped: opening reads and validates only the header;
/// tensor bytes are paged in when a tensor is read and released again once it is converted.
///
/// Layout: 8-byte little-endian header length N, N bytes of JSON
/// `{"__metadata__": {str: str}?, name: {"dtype", "shape", "data_offsets": [begin, end]}}`,
/// then the data section; offsets are relative to its start.
public final class SafetensorsFile: TensorStore, @unchecked Sendable {
    public let path: String
    public let metadata: [String: String]
    public let tensorNames: [String]
    let entries: [String: Entry]
    /// The mapped file (immutable; shared read-only).
    let file: MappedFile
    let dataStart: Int

    struct Entry {
        var dtype: SafetensorsDType
        var shape: [Int]
        var begin: Int  // absolute byte offsets in the file
        var end: Int
    }

    /// Headers above this are refused before allocating: real headers are a few MB at most.
    public static let maxHeaderBytes = 100 << 20

    /// `releasePages`: drop a tensor's mapped pages once it is read (the default; false only to
    /// measure what that saves).
    public init(path: String, releasePages: Bool = true) throws(SheafError) {
        self.path = path
        let fail = { (detail: String) in SheafError.io(path: path, detail: detail) }
        file = try MappedFile(path: path, releasesPages: releasePages)
        let mapped = file.bytes
        guard mapped.count >= 8 else { throw fail("truncated: \(mapped.count) bytes, a safetensors file needs an 8-byte header length") }
        let headerLength = UInt64(littleEndian: mapped.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(Self.maxHeaderBytes) else {
            throw fail("header length \(headerLength) exceeds the \(Self.maxHeaderBytes)-byte limit (corrupt or not safetensors)")
        }
        guard Int(headerLength) <= mapped.count - 8 else {
            throw fail("header length \(headerLength) runs past the end of the \(mapped.count)-byte file (truncated?)")
        }
        dataStart = 8 + Int(headerLength)
        let headerBytes = Data(mapped[8..<dataStart])
        guard String(data: headerBytes, encoding: .utf8) != nil else { throw fail("header is not valid UTF-8") }
        // One pass of Sheaf's own parser (duplicate keys refused, errors with a byte offset, a
        // few hundred bytes per tensor entry; JSONSerialization's NSDictionary cost ≈ 40× the header).
        let json: TokenizerJSONValue
        do { json = try TokenizerJSONParser.parse([UInt8](headerBytes)) } catch {
            throw fail(error.message.hasPrefix("duplicate key") ? "header: \(error.message)" : "header is not valid JSON (\(error.message))")
        }
        guard case .object(let members) = json else { throw fail("header JSON is not an object") }

        var meta: [String: String] = [:]
        var entries: [String: Entry] = [:]
        let dataSize = mapped.count - dataStart
        for (name, value) in members {
            if name == "__metadata__" {
                guard case .object(let m) = value else { throw fail("__metadata__ is not an object") }
                for (k, v) in m {
                    guard case .string(let s) = v else { throw fail("__metadata__[\(k)] is not a string") }
                    meta[k] = s
                }
                continue
            }
            guard case .object = value else { throw fail("tensor '\(name)': entry is not an object") }
            guard case .string(let dtypeName)? = value["dtype"] else { throw fail("tensor '\(name)': missing dtype") }
            guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
                throw fail("tensor '\(name)': unknown dtype '\(dtypeName)' (supported: \(SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard let shape = Self.integers(value["shape"]), shape.allSatisfy({ $0 >= 0 }) else {
                throw fail("tensor '\(name)': shape is not a list of non-negative integers")
            }
            guard let offsets = Self.integers(value["data_offsets"]), offsets.count == 2 else {
                throw fail("tensor '\(name)': data_offsets is not [begin, end]")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, begin <= end, end <= dataSize else {
                throw fail("tensor '\(name)': data_offsets [\(begin), \(end)] outside the \(dataSize)-byte data section")
            }
            guard let elements = Self.product(shape), let bytes = Self.multiply(elements, dtype.byteSize), bytes == end - begin else {
                throw fail("tensor '\(name)': shape \(shape) of \(dtype.rawValue) does not match its \(end - begin) bytes")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, begin: dataStart + begin, end: dataStart + end)
        }
        // No two tensors may share bytes.
        let byBegin = entries.sorted { ($0.value.begin, $0.key) < ($1.value.begin, $1.key) }
        for (a, b) in zip(byBegin, byBegin.dropFirst()) where b.value.begin < a.value.end {
            throw fail("tensors '\(a.key)' and '\(b.key)' overlap")
        }
        self.entries = entries
        metadata = meta
        tensorNames = entries.keys.sorted()
    }

    /// A JSON array of integers (2.5 must not pass as a size; a number beyond Int is refused).
    static func integers(_ value: TokenizerJSONValue?) -> [Int]? {
        guard case .array(let values)? = value else { return nil }
        var out: [Int] = []
        for v in values {
            guard case .number(let x) = v, let n = Int(exactly: x) else { return nil }
            out.append(n)
        }
        return out
    }

    static func product(_ shape: [Int]) -> Int? {
        var p = 1
        for d in shape {
            let (r, overflow) = p.multipliedReportingOverflow(by: d)
            if overflow { return nil }
            p = r
        }
        return p
    }

    static func multiply(_ a: Int, _ b: Int) -> Int? {
        let (r, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? nil : r
    }

    func entry(_ name: String) throws(SheafError) -> Entry {
        guard let e = entries[name] else { throw .io(path: path, detail: "no tensor named '\(name)'") }
        return e
    }

    public func info(_ name: String) throws(SheafError) -> TensorInfo {
        let e = try entry(name)
        return TensorInfo(name: name, shape: e.shape, type: e.dtype.rawValue, byteCount: e.end - e.begin)
    }

    public func dtype(_ name: String) throws(SheafError) -> SafetensorsDType { try entry(name).dtype }

    /// The stored bytes as they are (any dtype).
    public func rawBytes(_ name: String) throws(SheafError) -> [UInt8] {
        let e = try entry(name)
        defer { file.release(e.begin..<e.end) }
        return [UInt8](file.bytes[e.begin..<e.end])
    }

    #if os(Linux)
        /// How many whole pages of tensor `name`'s bytes this process has resident now (nil where
        /// /proc/self/pagemap cannot be read): a conversion leaves none (`MappedFile.release`).
        public func residentPages(_ name: String) throws(SheafError) -> (resident: Int, total: Int)? {
            let e = try entry(name)
            return file.residentPages(e.begin..<e.end)
        }
    #endif

    public func float32(_ name: String) throws(SheafError) -> [Float] {
        let e = try entry(name)
        let count = (e.end - e.begin) / e.dtype.byteSize
        var out = [Float](repeating: 0, count: count)
        let dtype = e.dtype
        // Converted once: the mapped pages are not needed after this (see `MappedFile.release`).
        defer { file.release(e.begin..<e.end) }
        do {
            let src = UnsafeRawBufferPointer(rebasing: file.bytes[e.begin..<e.end])
            out.withUnsafeMutableBufferPointer { dst in
                switch dtype {
                case .F32:
                    for i in 0..<count { dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
                case .F16:
                    for i in 0..<count { dst[i] = HalfFloat.f16ToFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
                case .BF16:
                    for i in 0..<count { dst[i] = HalfFloat.bf16ToFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
                case .F64:
                    for i in 0..<count { dst[i] = Float(Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
                // Small unsigned integers (cluster labels, quantisation codes) are exact in Float32.
                case .U8:
                    for i in 0..<count { dst[i] = Float(src[i]) }
                case .U16:
                    for i in 0..<count { dst[i] = Float(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
                default: break
                }
            }
        }
        guard [.F32, .F16, .BF16, .F64, .U8, .U16].contains(dtype) else {
            throw .io(path: path, detail: "tensor '\(name)' is \(dtype.rawValue), which Sheaf does not read as numbers")
        }
        return out
    }
}

/// A checkpoint split into shards by `model.safetensors.index.json` (`weight_map`: tensor
/// name → shard file). Shards are opened (headers only) when the index is read.
public final class ShardedSafetensors: TensorStore, @unchecked Sendable {
    public let path: String
    public let tensorNames: [String]
    let shardOf: [String: SafetensorsFile]

    public init(indexPath: String) throws(SheafError) {
        path = indexPath
        let dir = (indexPath as NSString).deletingLastPathComponent
        let fail = { (detail: String) in SheafError.io(path: indexPath, detail: detail) }
        guard let bytes = FileManager.default.contents(atPath: indexPath) else { throw fail("cannot read the index") }
        try checkJSON([UInt8](bytes), path: indexPath, what: "index")
        guard let object = (try? JSONSerialization.jsonObject(with: bytes)) as? [String: Any],
            let map = object["weight_map"] as? [String: Any]
        else { throw fail("not a safetensors index: expected a JSON object with a weight_map") }
        var shards: [String: SafetensorsFile] = [:]
        var shardOf: [String: SafetensorsFile] = [:]
        for (tensor, fileValue) in map {
            guard let file = fileValue as? String, !file.contains("/") else {
                throw fail("weight_map['\(tensor)'] is not a file name in the same folder")
            }
            if shards[file] == nil {
                let shardPath = (dir as NSString).appendingPathComponent(file)
                guard FileManager.default.fileExists(atPath: shardPath) else {
                    throw fail("shard '\(file)' named for tensor '\(tensor)' does not exist")
                }
                shards[file] = try SafetensorsFile(path: shardPath)
            }
            guard shards[file]!.entries[tensor] != nil else {
                throw fail("tensor '\(tensor)' is not in its shard '\(file)'")
            }
            shardOf[tensor] = shards[file]
        }
        // A tensor stored in a second shard besides the one the index names: ambiguous, refused.
        for (file, shard) in shards.sorted(by: { $0.key < $1.key }) {
            for name in shard.tensorNames where shardOf[name] !== shard {
                let named = map[name] as? String
                throw fail("tensor '\(name)' is in shard '\(file)'" + (named.map { " and in '\($0)', which the index names" } ?? ", which the index does not name"))
            }
        }
        self.shardOf = shardOf
        tensorNames = shardOf.keys.sorted()
    }

    func shard(_ name: String) throws(SheafError) -> SafetensorsFile {
        guard let s = shardOf[name] else { throw .io(path: path, detail: "no tensor named '\(name)'") }
        return s
    }

    public func info(_ name: String) throws(SheafError) -> TensorInfo { try shard(name).info(name) }
    public func float32(_ name: String) throws(SheafError) -> [Float] { try shard(name).float32(name) }
    public func rawBytes(_ name: String) throws(SheafError) -> [UInt8] { try shard(name).rawBytes(name) }
    public func dtype(_ name: String) throws(SheafError) -> SafetensorsDType { try shard(name).dtype(name) }
}
