import SheafBackend
import SheafCore
import SheafIO

/// A weight matrix on the backend in the form its checkpoint stores: float32; float16 /
/// bfloat16 kept as 16 bits; or group-wise quantised codes with their minima and steps. A
/// 16-bit or quantised matrix is expanded into a scratch shared by every layer just before a
/// product reads it (layers run one at a time), so that a model's resident memory follows its
/// bytes on disk. The expansion is exact (the values are the checkpoint's); it costs one pass
/// over the matrix per product.
public struct ResidentMatrix: Sendable {
    /// float32 or 16-bit (rows, cols); or quantised: the stored tensor T (cols, rows), of which
    /// this matrix is the transpose, whose column block is a row block of T (`dequantizeRows`).
    public let storage: WeightStorage
    /// Rows and columns of the matrix a product reads (the transpose of a quantised tensor).
    public let rows: Int
    public let cols: Int
    /// Where a 16-bit or quantised matrix is expanded; nil for float32.
    let scratch: Scratch?

    /// The element type held: float32, float16, bfloat16, or uint8 for codes.
    public var storedScalar: ScalarType {
        switch storage {
        case .float32(let v), .half(let v): v.buffer.scalar
        case .quantized(let codes, _, _, _, _): codes.buffer.scalar
        }
    }

    /// Bytes it holds on the backend.
    public var residentBytes: Int {
        switch storage {
        case .float32(let v), .half(let v): v.rows * v.cols * v.buffer.scalar.byteSize
        case .quantized(let codes, let minima, let steps, _, _): codes.buffer.byteCount + minima.buffer.byteCount + steps.buffer.byteCount
        }
    }

    /// Float32 values, uploaded as they are.
    public init(_ view: MatrixView) {
        storage = .float32(view)
        (rows, cols) = (view.rows, view.cols)
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
        let view = try MatrixView(try uploaded.get(), rows: transposed ? cols : rows, cols: transposed ? rows : cols)
        storage = .half(view)
        (self.rows, self.cols) = (view.rows, view.cols)
        self.scratch = scratch
    }

    /// A quantised tensor T (`layout.shape` = (tRows, tCols)) as its transpose (tCols, tRows), the
    /// layout a product x·Tᵀ reads, kept as codes, minima and steps.
    public init(
        quantized layout: CompressedManifest.QuantizedTensor, codes: [UInt8], minima: [Float], steps: [Float], scratch: Scratch,
        on backend: any Backend, label: String
    ) throws(SheafError) {
        let (tRows, tCols) = (layout.shape[0], layout.shape[1])
        let rowBytes = RoundToNearest.bytesPerRow(dIn: tCols, bits: layout.bits), groups = RoundToNearest.groups(dIn: tCols, group: layout.group)
        guard codes.count == tRows * rowBytes, minima.count == tRows * groups, steps.count == tRows * groups else {
            throw .shapeMismatch(op: "upload \(label)", detail: "\(codes.count) code bytes, \(minima.count) minima, \(steps.count) steps for \(layout.shape)")
        }
        let uploaded: Result<DeviceBuffer, SheafError> = codes.withUnsafeBytes { raw in
            do throws(SheafError) { return .success(try backend.uploadBytes(raw, as: .uint8)) } catch { return .failure(error) }
        }
        storage = .quantized(
            codes: try MatrixView(try uploaded.get(), rows: tRows, cols: rowBytes),
            minima: try MatrixView(backend.upload(minima, label: label + " minima"), rows: tRows, cols: groups),
            steps: try MatrixView(backend.upload(steps, label: label + " steps"), rows: tRows, cols: groups), bits: layout.bits,
            group: layout.group)
        (rows, cols) = (tCols, tRows)
        self.scratch = scratch
    }

    /// The float32 matrix when it is held as float32 (a product reads it in place); nil otherwise.
    public var float32InPlace: MatrixView? {
        if case .float32(let v) = storage { return v }
        return nil
    }

    /// The whole matrix as float32: itself, or its expansion in the scratch (valid until the
    /// next expansion through the same scratch).
    public func float32() throws(SheafError) -> MatrixView {
        try float32(columns: 0..<cols)
    }

    /// Columns `columns` as a float32 (rows, columns.count) view.
    public func float32(columns: Range<Int>) throws(SheafError) -> MatrixView {
        switch storage {
        case .float32(let v):
            return try MatrixView(v.buffer, rows: rows, cols: columns.count, rowStride: v.rowStride, offset: v.offset + columns.lowerBound)
        case .half(let v):
            let block = try MatrixView(v.buffer, rows: rows, cols: columns.count, rowStride: v.rowStride, offset: v.offset + columns.lowerBound)
            let out = try scratch!.view(rows: rows, cols: columns.count)
            try scratch!.backend.convertToFloat32(block, into: out)
            return out
        case .quantized(let codes, let minima, let steps, let bits, let group):
            let out = try scratch!.view(rows: rows, cols: columns.count)
            try scratch!.backend.dequantizeRows(
                codes: try Self.rowBlock(codes, columns), minima: try Self.rowBlock(minima, columns), steps: try Self.rowBlock(steps, columns),
                bits: bits, group: group, into: out, transposed: true)
            return out
        }
    }

    /// Columns `columns` as a product's float32 operand: `float32(columns:)`, or, for a quantised
    /// matrix on the cpu, the stored rows expanded in place (contiguous writes; the transposed
    /// expansion scatters them, which cost the output head 1.5 s a window) with `transposed` set
    /// for the GEMM to read them as their transpose. OpenCL keeps the transposed expansion (its
    /// writes coalesce either way, and its GEMM runs fastest without a transposed operand).
    public func operand(columns: Range<Int>) throws(SheafError) -> (view: MatrixView, transposed: Bool) {
        guard case .quantized(let codes, let minima, let steps, let bits, let group) = storage, scratch!.backend.kind == .cpu else {
            return (try float32(columns: columns), false)
        }
        let out = try scratch!.view(rows: columns.count, cols: rows)
        try scratch!.backend.dequantizeRows(
            codes: try Self.rowBlock(codes, columns), minima: try Self.rowBlock(minima, columns), steps: try Self.rowBlock(steps, columns),
            bits: bits, group: group, into: out, transposed: false)
        return (out, true)
    }

    /// The whole matrix as a product's operand (`operand(columns:)`).
    public func operand() throws(SheafError) -> (view: MatrixView, transposed: Bool) { try operand(columns: 0..<cols) }

    /// Rows `range` of `v`.
    static func rowBlock(_ v: MatrixView, _ range: Range<Int>) throws(SheafError) -> MatrixView {
        try MatrixView(v.buffer, rows: range.count, cols: v.cols, rowStride: v.rowStride, offset: v.offset + range.lowerBound * v.rowStride)
    }
}
