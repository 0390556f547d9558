import Foundation
import SheafCore

/// A tensor to write: float values stored as F32, F16 or BF16, or raw bytes of any dtype; given
/// now, or produced by a closure when the writer reaches the tensor, so that a whole model is
/// written holding one tensor's bytes at a time.
public struct TensorToWrite: Sendable {
    public var name: String
    public var shape: [Int]
    public var dtype: SafetensorsDType
    /// Stored size: shape × dtype size.
    public let byteCount: Int
    private let content: Content

    private enum Content: Sendable {
        case stored([UInt8])
        case deferred(@Sendable () throws(SheafError) -> [UInt8])
    }

    /// Float32 values stored as `dtype` (F32, F16 or BF16; rounding to nearest even).
    public init(name: String, shape: [Int], values: [Float], as dtype: SafetensorsDType = .F32) throws(SheafError) {
        try self.init(name: name, shape: shape, dtype: dtype, bytes: try Self.encode(values, as: dtype, name: name, shape: shape))
    }

    /// Float32 values from `values()`, called once when the writer reaches this tensor, stored as
    /// `dtype` (F32, F16, BF16, or U8/U16 for integer values).
    public init(
        name: String, shape: [Int], as dtype: SafetensorsDType = .F32, values: @escaping @Sendable () throws(SheafError) -> [Float]
    ) throws(SheafError) {
        guard [.F32, .F16, .BF16, .U8, .U16].contains(dtype) else {
            throw .invalidArgument(op: "safetensors write", detail: "tensor '\(name)': float values cannot be stored as \(dtype.rawValue)")
        }
        self.name = name
        self.shape = shape
        self.dtype = dtype
        byteCount = shape.reduce(1, *) * dtype.byteSize
        content = .deferred { () throws(SheafError) in try Self.encode(try values(), as: dtype, name: name, shape: shape) }
    }

    /// Stored bytes from `bytes()`, called once when the writer reaches this tensor; their count
    /// must match shape × dtype size.
    public init(name: String, shape: [Int], dtype: SafetensorsDType, deferredBytes bytes: @escaping @Sendable () throws(SheafError) -> [UInt8]) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        byteCount = shape.reduce(1, *) * dtype.byteSize
        content = .deferred(bytes)
    }

    /// Stored bytes as they are; their count must match shape × dtype size.
    public init(name: String, shape: [Int], dtype: SafetensorsDType, bytes: [UInt8]) throws(SheafError) {
        guard shape.reduce(1, *) * dtype.byteSize == bytes.count else {
            throw .shapeMismatch(op: "safetensors write", detail: "tensor '\(name)': shape \(shape) of \(dtype.rawValue) for \(bytes.count) bytes")
        }
        self.name = name
        self.shape = shape
        self.dtype = dtype
        byteCount = bytes.count
        content = .stored(bytes)
    }

    /// The stored bytes (running the producer of a deferred tensor).
    public func storedBytes() throws(SheafError) -> [UInt8] {
        switch content {
        case .stored(let bytes): return bytes
        case .deferred(let produce):
            let bytes = try produce()
            guard bytes.count == byteCount else {
                throw .shapeMismatch(op: "safetensors write", detail: "tensor '\(name)': \(bytes.count) bytes produced for \(byteCount)")
            }
            return bytes
        }
    }

    static func encode(_ values: [Float], as dtype: SafetensorsDType, name: String, shape: [Int]) throws(SheafError) -> [UInt8] {
        guard shape.reduce(1, *) == values.count else {
            throw .shapeMismatch(op: "safetensors write", detail: "tensor '\(name)': shape \(shape) for \(values.count) values")
        }
        switch dtype {
        case .F32: return values.withUnsafeBytes { [UInt8]($0) }
        case .F16, .BF16: return pack16(try dtype.halfBits(values, tensor: name))
        case .U8, .U16:
            let limit: Float = dtype == .U8 ? 255 : 65535
            if let bad = values.firstIndex(where: { !($0 >= 0 && $0 <= limit && $0.rounded() == $0) }) {
                throw .invalidArgument(op: "safetensors write", detail: "tensor '\(name)': value \(values[bad]) at \(bad) is not a \(dtype.rawValue)")
            }
            return dtype == .U8 ? values.map { UInt8($0) } : pack16(values.map { UInt16($0) })
        default:
            throw .invalidArgument(op: "safetensors write", detail: "tensor '\(name)': float values cannot be stored as \(dtype.rawValue)")
        }
    }

    static func pack16(_ halves: [UInt16]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: halves.count * 2)
        for (i, h) in halves.enumerated() {
            out[2 * i] = UInt8(h & 0xFF)
            out[2 * i + 1] = UInt8(h >> 8)
        }
        return out
    }
}

/// Writes the standard safetensors layout: tensors sorted by name, header JSON with sorted
/// keys padded with spaces to a multiple of 8, optional `__metadata__`. Files are written under
/// a temporary name in the destination folder and renamed when complete.
public enum SafetensorsWriter {
    /// Writes `tensors` as `model.safetensors` in `directory`, or, when their total exceeds
    /// `shardBytes`, as `model-0000i-of-0000n.safetensors` shards plus
    /// `model.safetensors.index.json`. Returns the files written (names only).
    @discardableResult
    public static func writeModel(
        _ tensors: [TensorToWrite], metadata: [String: String] = [:], to directory: String,
        shardBytes: Int = 5 << 30
    ) throws(SheafError) -> [String] {
        let sorted = tensors.sorted { $0.name < $1.name }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.name == b.name {
            throw .invalidArgument(op: "safetensors write", detail: "duplicate tensor name '\(a.name)' for \(directory)")
        }
        var groups: [[TensorToWrite]] = [[]]
        var groupBytes = 0
        for t in sorted {
            if groupBytes > 0 && groupBytes + t.byteCount > shardBytes {
                groups.append([])
                groupBytes = 0
            }
            groups[groups.count - 1].append(t)
            groupBytes += t.byteCount
        }
        if groups.count == 1 {
            try write(sorted, metadata: metadata, to: (directory as NSString).appendingPathComponent("model.safetensors"))
            return ["model.safetensors"]
        }
        let n = groups.count
        var names: [String] = []
        var weightMap: [String: String] = [:]
        for (i, group) in groups.enumerated() {
            let name = String(format: "model-%05d-of-%05d.safetensors", i + 1, n)
            try write(group, metadata: metadata, to: (directory as NSString).appendingPathComponent(name))
            for t in group { weightMap[t.name] = name }
            names.append(name)
        }
        let total = sorted.reduce(0) { $0 + $1.byteCount }
        let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
        let json: Data
        do { json = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys]) } catch {
            throw .io(path: directory, detail: "cannot encode the shard index: \(error)")
        }
        try atomicWrite(json, to: (directory as NSString).appendingPathComponent("model.safetensors.index.json"))
        return names + ["model.safetensors.index.json"]
    }

    /// One safetensors file at `path`: the header, then each tensor's bytes as it is produced.
    public static func write(_ tensors: [TensorToWrite], metadata: [String: String] = [:], to path: String) throws(SheafError) {
        let sorted = tensors.sorted { $0.name < $1.name }
        var seen = Set<String>()
        for t in sorted where !seen.insert(t.name).inserted {
            throw .invalidArgument(op: "safetensors write", detail: "duplicate tensor name '\(t.name)' for \(path)")
        }
        var header = "{"
        var parts: [String] = []
        if !metadata.isEmpty {
            let items = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            parts.append("\"__metadata__\":{\(items.joined(separator: ","))}")
        }
        var offset = 0
        for t in sorted {
            let shape = t.shape.map(String.init).joined(separator: ",")
            parts.append("\(jsonString(t.name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + t.byteCount)]}")
            offset += t.byteCount
        }
        header += parts.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        try atomicWrite(to: path) { (file) throws(SheafError) in
            try file.append(withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { [UInt8]($0) })
            try file.append(headerBytes)
            for t in sorted { try file.append(try t.storedBytes()) }  // one tensor's bytes at a time
        }
    }

    /// A JSON string literal.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }
}

/// Writes `data` to `path` through a temporary file in the same folder, renamed into place
/// only once fully written: an interrupted run never leaves a file that looks finished.
public func atomicWrite(_ data: Data, to path: String) throws(SheafError) {
    try atomicWrite(to: path) { (file) throws(SheafError) in try file.append(data) }
}

/// A file being written by `atomicWrite(to:_:)`.
public struct FileSink {
    let file: UnsafeMutablePointer<FILE>
    let path: String

    public func append(_ bytes: [UInt8]) throws(SheafError) {
        let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        guard written == bytes.count else { throw .io(path: path, detail: "cannot write: \(String(cString: strerror(errno)))") }
    }

    public func append(_ data: Data) throws(SheafError) {
        let written = data.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        guard written == data.count else { throw .io(path: path, detail: "cannot write: \(String(cString: strerror(errno)))") }
    }
}

/// Streams a file to `path`: `body` appends to a temporary file in the same folder, which is
/// renamed into place once complete, and removed if `body` or a write fails.
public func atomicWrite(to path: String, _ body: (FileSink) throws(SheafError) -> Void) throws(SheafError) {
    let url = URL(fileURLWithPath: path)
    let temp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).partial-\(getpid())").path
    guard let file = fopen(temp, "wb") else {
        throw .io(path: path, detail: "cannot write: \(String(cString: strerror(errno)))")
    }
    do throws(SheafError) {
        try body(FileSink(file: file, path: path))
    } catch {
        fclose(file)
        unlink(temp)
        throw error
    }
    guard fclose(file) == 0 else {  // flushes the last buffered bytes: a full disk shows here
        let reason = String(cString: strerror(errno))
        unlink(temp)
        throw .io(path: path, detail: "cannot write: \(reason)")
    }
    // rename(2) replaces an existing file atomically: the old one or the new one, never none.
    guard rename(temp, path) == 0 else {
        let reason = String(cString: strerror(errno))
        unlink(temp)
        throw .io(path: path, detail: "cannot move the finished file into place: \(reason)")
    }
}
