import SheafBackend
import SheafCore
import SheafIO

/// A weight matrix on the backend in the type its checkpoint stores: float32, or float16 /
/// bfloat16 kept as 16 bits and converted into a scratch shared by every layer just before a
/// product reads it (layers run one at a time), so that a model's resident memory follows its
/// bytes on disk. The conversion is exact; it costs one pass over the matrix per product.
public struct ResidentMatrix: Sendable {
    /// (rows, cols) as uploaded: float32, float16 or bfloat16.
    public let stored: MatrixView
    /// Where a 16-bit matrix is converted; nil for float32.
    let scratch: Scratch?

    public var rows: Int { stored.rows }
    public var cols: Int { stored.cols }
    /// Bytes it holds on the backend.
    public var residentBytes: Int { stored.rows * stored.cols * stored.buffer.scalar.byteSize }

    /// Float32 values, uploaded as they are.
    public init(_ view: MatrixView) {
        stored = view
        scratch = nil
    }

    /// 16-bit values (`dtype` F16 or BF16) of a (rows, cols) row-major matrix, uploaded as the
    /// transpose when `transposed` (the layout a product reads), converted through `scratch`.
    public init(
        bits: [UInt16], dtype: SafetensorsDType, rows: Int, cols: Int, transposed: Bool, scratch: Scratch, on backend: any Backend,
        label: String
    ) throws(SheafError) {
        guard bits.count == rows * cols, dtype == .F16 || dtype == .BF16 else {
            throw .shapeMismatch(op: "upload \(label)", detail: "\(bits.count) \(dtype.rawValue) values for (\(rows), \(cols))")
        }
        var laid = bits
        if transposed {
            bits.withUnsafeBufferPointer { b in
                laid.withUnsafeMutableBufferPointer { t in
                    for r in 0..<rows { for c in 0..<cols { t[c * rows + r] = b[r * cols + c] } }
                }
            }
        }
        let scalar: ScalarType = dtype == .F16 ? .float16 : .bfloat16
        let uploaded: Result<DeviceBuffer, SheafError> = laid.withUnsafeBytes { raw in
            do throws(SheafError) { return .success(try backend.uploadBytes(raw, as: scalar)) } catch { return .failure(error) }
        }
        let buffer = try uploaded.get()
        stored = try MatrixView(buffer, rows: transposed ? cols : rows, cols: transposed ? rows : cols)
        self.scratch = scratch
    }

    /// The whole matrix as float32: `stored` itself, or its conversion in the scratch (valid
    /// until the next conversion through the same scratch).
    public func float32() throws(SheafError) -> MatrixView {
        try float32(columns: 0..<cols)
    }

    /// Columns `columns` as a float32 (rows, columns.count) view.
    public func float32(columns: Range<Int>) throws(SheafError) -> MatrixView {
        let block = try MatrixView(
            stored.buffer, rows: rows, cols: columns.count, rowStride: stored.rowStride, offset: stored.offset + columns.lowerBound)
        guard let scratch else { return block }
        let out = try scratch.view(rows: rows, cols: columns.count)
        try scratch.backend.convertToFloat32(block, into: out)
        return out
    }
}
