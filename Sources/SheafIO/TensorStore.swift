import SheafCore

/// A tensor as described by a file, before its data is read.
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    /// PyTorch order, outermost first: a linear weight is [dOut, dIn]. (GGUF lists dimensions
    /// innermost first; its reader reverses them.)
    public var shape: [Int]
    /// The stored element type as the file names it: "F32", "F16", "BF16", "I8", ... for
    /// safetensors; "F32", "F16", "Q4_1", "Q8_0", ... for GGUF.
    public var type: String
    /// Bytes of stored data.
    public var byteCount: Int

    public init(name: String, shape: [Int], type: String, byteCount: Int) {
        self.name = name
        self.shape = shape
        self.type = type
        self.byteCount = byteCount
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// A file (or set of shards) of named tensors, read lazily: opening it reads only headers;
/// tensor data is read (memory-mapped) and converted on request.
public protocol TensorStore: AnyObject, Sendable {
    /// The file or folder it was opened from, for error messages.
    var path: String { get }
    /// Every tensor name, sorted.
    var tensorNames: [String] { get }
    func info(_ name: String) throws(SheafError) -> TensorInfo
    /// The tensor's values as Float32, row-major in `info(name).shape`: converted from
    /// F16/BF16, dequantised from GGUF block types. Integer tensors throw.
    func float32(_ name: String) throws(SheafError) -> [Float]
}
