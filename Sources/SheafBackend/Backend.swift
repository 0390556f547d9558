import SheafCore

/// Element types a backend buffer can hold. `float16` (IEEE binary16), `bfloat16` and `uint8`
/// are storage types only: weights kept as a checkpoint stores them, read by
/// `convertToFloat32` (16-bit floats) or `dequantizeRows` (packed codes) into float32 before
/// any arithmetic.
public enum ScalarType: String, Sendable {
    case float32, float64, int32, float16, bfloat16, uint8

    public var byteSize: Int {
        switch self {
        case .float32, .int32: 4
        case .float64: 8
        case .float16, .bfloat16: 2
        case .uint8: 1
        }
    }

    /// Whether buffers of this type hold 16-bit float storage (`convertToFloat32`'s sources).
    public var isHalfStorage: Bool { self == .float16 || self == .bfloat16 }
}

/// A weight as a backend holds it for the product y = x·W of a layer, in the form its
/// checkpoint stores it: W (n, m) float32 or 16-bit (float16/bfloat16), in the layout the product
/// reads; or W's transpose T (m, n) group-wise quantised (`dequantizeRows`' codes, minima and
/// steps, one row of T per output).
public enum WeightStorage: Sendable {
    case float32(MatrixView)
    case half(MatrixView)
    case quantized(codes: MatrixView, minima: MatrixView, steps: MatrixView, bits: Int, group: Int)

}

/// Swift types that map onto a `ScalarType`.
public protocol DeviceScalar: Sendable {
    static var scalarType: ScalarType { get }
    static var zero: Self { get }
    /// Index of the first NaN or infinity in `values` (nil for integers). A requirement, so
    /// generic callers dispatch to a loop compiled for the concrete type: `values as? [Float]`
    /// in generic code casts element by element (tens of ns each, seconds for a model).
    static func firstNonFinite(_ values: [Self]) -> Int?
}
extension Float: DeviceScalar {
    public static var scalarType: ScalarType { .float32 }
    public static func firstNonFinite(_ values: [Float]) -> Int? { values.firstIndex { !$0.isFinite } }
}
extension Double: DeviceScalar {
    public static var scalarType: ScalarType { .float64 }
    public static func firstNonFinite(_ values: [Double]) -> Int? { values.firstIndex { !$0.isFinite } }
}
extension Int32: DeviceScalar {
    public static var scalarType: ScalarType { .int32 }
    public static func firstNonFinite(_ values: [Int32]) -> Int? { nil }
}

public enum BackendKind: String, Sendable, CaseIterable {
    case cpu, opencl, reference
}

/// Memory owned by one backend: host memory for `cpu` and `reference`, a `cl_mem` for `opencl`.
/// Contents are zero when allocated.
public final class DeviceBuffer: @unchecked Sendable {
    public let scalar: ScalarType
    /// Elements, not bytes.
    public let count: Int
    /// The backend that allocated it; other backends refuse it.
    let owner: ObjectIdentifier
    let storage: AnyObject

    init(scalar: ScalarType, count: Int, owner: ObjectIdentifier, storage: AnyObject) {
        self.scalar = scalar
        self.count = count
        self.owner = owner
        self.storage = storage
    }

    public var byteCount: Int { count * scalar.byteSize }
}

/// A row-major matrix inside a buffer: element (r, c) is at `offset + r * rowStride + c`.
/// A `rowStride` larger than `cols` makes a strided view (a block of a larger matrix).
public struct MatrixView: Sendable {
    public let buffer: DeviceBuffer
    public let rows: Int
    public let cols: Int
    public let rowStride: Int
    public let offset: Int

    public init(_ buffer: DeviceBuffer, rows: Int, cols: Int, rowStride: Int? = nil, offset: Int = 0)
        throws(SheafError)
    {
        let stride = rowStride ?? cols
        guard rows >= 0, cols >= 0, offset >= 0, stride >= cols else {
            throw .invalidArgument(
                op: "MatrixView",
                detail: "bad view (\(rows), \(cols)) rowStride \(stride) offset \(offset)")
        }
        let end = rows == 0 || cols == 0 ? offset : offset + (rows - 1) * stride + cols
        guard end <= buffer.count else {
            throw .shapeMismatch(
                op: "MatrixView",
                detail: "view (\(rows), \(cols)) rowStride \(stride) offset \(offset) needs \(end) elements, buffer has \(buffer.count)")
        }
        self.buffer = buffer
        self.rows = rows
        self.cols = cols
        self.rowStride = stride
        self.offset = offset
    }

    /// A (rows, cols) view that repeats the single row of `row` (rowStride 0): an input to
    /// element-wise ops such as `add`, for a bias. Not valid as a GEMM operand.
    public init(broadcasting row: MatrixView, rows: Int) throws(SheafError) {
        guard row.rows == 1, rows >= 1 else {
            throw .invalidArgument(op: "MatrixView", detail: "broadcasting needs a single row, got \(row.shape)")
        }
        buffer = row.buffer
        self.rows = rows
        cols = row.cols
        rowStride = 0
        offset = row.offset
    }

    public var shape: String { "(\(rows), \(cols))" + (rowStride != cols ? " stride \(rowStride)" : "") }
    public var isEmpty: Bool { rows == 0 || cols == 0 }
}

/// A Cholesky factor `lower` with `input + shift·I = lower·lowerᵀ`.
public struct CholeskyFactor: Sendable {
    /// (n, n), zero above the diagonal.
    public var lower: Matrix<Double>
    /// The diagonal shift that was needed; 0 when the input was positive definite as given.
    public var shift: Double
    public var usedFallback: Bool { shift != 0 }
}

/// The numeric operations the pipeline needs. Implementations: `CPUBackend` (OpenBLAS/LAPACK),
/// `OpenCLBackend` (kernels in kernels/*.cl), `ReferenceBackend` (plain Swift, Float64; the
/// test oracle). Operands are views of buffers the backend allocated; shapes are checked and a
/// mismatch throws `SheafError.shapeMismatch` naming the op.
public protocol Backend: AnyObject, Sendable {
    var kind: BackendKind { get }
    /// Human-readable device, e.g. "OpenBLAS Haswell, 2 threads".
    var deviceName: String { get }

    /// A zero-filled buffer of `count` elements.
    func makeBuffer(_ scalar: ScalarType, count: Int) throws(SheafError) -> DeviceBuffer
    /// Copies `bytes` (a whole number of `scalar` elements) into a new buffer.
    func uploadBytes(_ bytes: UnsafeRawBufferPointer, as scalar: ScalarType) throws(SheafError) -> DeviceBuffer
    /// Copies the whole buffer into `bytes` (exactly `buffer.byteCount` long).
    func downloadBytes(_ buffer: DeviceBuffer, into bytes: UnsafeMutableRawBufferPointer) throws(SheafError)

    /// c = alpha · op(a) · op(b) + beta · c, float32. op(x) is x or xᵀ; with beta = 0, c is not read.
    func gemm(
        _ a: MatrixView, transposeA: Bool, _ b: MatrixView, transposeB: Bool, into c: MatrixView,
        alpha: Float, beta: Float) throws(SheafError)

    /// gram += xᵀ·x for x (rows, d) float32 and gram (d, d) Float64, the full symmetric matrix.
    /// Called once per chunk of calibration rows.
    func accumulateGram(_ x: MatrixView, into gram: MatrixView) throws(SheafError)

    /// Cholesky factor of a symmetric positive-definite (n, n) matrix in Float64. When the
    /// factorisation fails, adds (−λmin + epsilon)·I and retries once; the shift is reported.
    func cholesky(_ a: Matrix<Double>, epsilon: Double) throws(SheafError) -> CholeskyFactor

    /// out = w · lower for w (m, n) float32, lower (n, n) Float64 lower-triangular, out (m, n) Float64.
    func multiplyLower(_ w: MatrixView, _ lower: MatrixView, into out: MatrixView) throws(SheafError)

    /// y ← y · lower⁻¹ in place, for y (m, n) Float64 and lower (n, n) lower-triangular with
    /// a non-zero diagonal, by substitution (the inverse is not formed).
    func solveLowerRight(_ y: MatrixView, _ lower: MatrixView) throws(SheafError)

    /// distances[i, c] = ‖points[i] − centroids[c]‖² for points (m, d), centroids (k, d),
    /// distances (m, k), all float32; computed as ‖p‖² + ‖c‖² − 2·p·c (a GEMM), clamped at 0.
    func kmeansDistances(points: MatrixView, centroids: MatrixView, into distances: MatrixView)
        throws(SheafError)

    /// labels[i] = argmin_c distances[i, c] (lowest index on ties), minima[i] = that distance.
    /// labels: int32 (m), minima: float32 (m).
    func kmeansAssign(distances: MatrixView, labels: DeviceBuffer, minima: DeviceBuffer) throws(SheafError)

    /// sums[c] = Σ_{i: labels[i] = c} points[i] (Float64, (k, d)), counts[c] = |{i: labels[i] = c}|
    /// (int32, k). Labels outside 0..<k throw.
    func kmeansAccumulate(points: MatrixView, labels: DeviceBuffer, sums: MatrixView, counts: DeviceBuffer)
        throws(SheafError)

    // MARK: clustered layers (SWSC)

    /// out[r, i] = src[r, labels[i]] for src (rows, k), labels int32 (n) with values in 0..<k and
    /// out (rows, n), all float32: a row-clustered layer's outputs, each output channel the
    /// column of x·Cᵀ of its cluster's centroid. `cpu` and `reference` refuse a label outside
    /// 0..<k; `opencl`, whose labels stay on the device, writes 0 there (a clustered layer checks
    /// its labels once, when it loads).
    func gatherColumns(_ src: MatrixView, labels: DeviceBuffer, into out: MatrixView) throws(SheafError)

    /// out[r, c] = Σ_{t ∈ starts[c] ..< starts[c + 1]} src[r, members[t]] for src (rows, n),
    /// members int32 (n) listing the columns of group 0, then group 1, …, starts int32 (k + 1)
    /// with starts[0] = 0 and starts[k] ≤ n, out (rows, k): a column-clustered layer's input,
    /// the inputs of each cluster summed (x·A for the (n, k) one-hot assignment A), summed in
    /// member order. Members and starts are checked like `gatherColumns`' labels.
    func sumColumnGroups(_ src: MatrixView, members: DeviceBuffer, starts: DeviceBuffer, into out: MatrixView) throws(SheafError)

    /// out = the float32 values of src, a (rows, cols) view of a `float16` or `bfloat16`
    /// buffer (any row stride and offset, in elements), out (rows, cols) float32: weights kept in
    /// their stored 16-bit form are converted into a scratch just before a product reads them.
    /// Exact (every 16-bit value is a float32); infinities and NaN carry over.
    func convertToFloat32(_ src: MatrixView, into out: MatrixView) throws(SheafError)

    /// Rows of a group-wise round-to-nearest quantised matrix W (rows, n) as float32: code q of
    /// W[r, c] is bits c·bits ..< (c+1)·bits of row r of `codes` (a (rows, ≥ ⌈n·bits/8⌉) view of a
    /// `uint8` buffer; bit b of a row is bit b % 8 of its byte b / 8), and
    /// W[r, c] = minima[r, g] + q · steps[r, g] with g = c / group, minima and steps (rows,
    /// ⌈n/group⌉) float32, the product rounded before the sum (no fused multiply-add: every
    /// backend and the host codec give the same bits). out is (rows, n), or Wᵀ (n, rows) when
    /// `transposed` (the layout a product x·Wᵀ reads). bits 1...8. Weights kept quantised are
    /// expanded into a scratch, a block of rows at a time, just before a product reads them.
    func dequantizeRows(
        codes: MatrixView, minima: MatrixView, steps: MatrixView, bits: Int, group: Int, into out: MatrixView, transposed: Bool
    ) throws(SheafError)

    /// y (1, m) = x (1, n) · W, or y += that when `accumulate`, for a weight in its stored form
    /// (`WeightStorage`): one decoded token's product, reading each stored weight once and
    /// converting it in registers (no float32 copy of W is made). float32 W is a plain GEMV;
    /// 16-bit W (n, m) is read row by row into m accumulators; a quantised T (m, n) gives each
    /// output as its row's dot product with x. Sums are float32 in an order of the backend's
    /// choosing (compare within a GEMV's rounding bound).
    func gemvStored(_ x: MatrixView, _ w: WeightStorage, into y: MatrixView, accumulate: Bool) throws(SheafError)

    // MARK: forward-pass element-wise ops (float32, rows are tokens)

    /// out[r] = x[r] / √(mean(x[r]²) + eps) · weight, for x and out (rows, d), weight (1, d).
    /// out may be x.
    func rmsNorm(_ x: MatrixView, weight: MatrixView, eps: Float, into out: MatrixView) throws(SheafError)

    /// Rotary position embedding in place, HuggingFace `rotate_half` layout: x (tokens,
    /// heads·headDim); in each head, element i < headDim/2 pairs with i + headDim/2 and both
    /// rotate by angle p·θ^(−2i/headDim) for position p = positionOffset + token.
    func rope(_ x: MatrixView, headDim: Int, positionOffset: Int, theta: Double) throws(SheafError)

    /// Causal grouped-query attention of one sequence: q (tq, heads·headDim), k and v
    /// (tk, kvHeads·headDim) with tk ≥ tq, out (tq, heads·headDim). Query t sees keys
    /// 0 ... t + tk − tq (the queries are the last tq positions); query head h reads key-value
    /// head h / (heads / kvHeads); scores are scaled by 1/√headDim; softmax is max-subtracted.
    func causalAttention(
        q: MatrixView, k: MatrixView, v: MatrixView, into out: MatrixView, heads: Int, kvHeads: Int, headDim: Int
    ) throws(SheafError)

    /// out = silu(gate) · up element-wise, silu(g) = g / (1 + e^(−g)); all (rows, d). out may
    /// be gate or up.
    func siluMultiply(gate: MatrixView, up: MatrixView, into out: MatrixView) throws(SheafError)

    /// y += x element-wise (the residual connection); both (rows, d).
    func add(_ x: MatrixView, into y: MatrixView) throws(SheafError)

    /// nll[r] = logsumexp(logits[r]) − logits[r, targets[r]] for logits (rows, vocabulary),
    /// targets int32 (rows), nll float32 (rows); computed max-subtracted, summed in Float64.
    func crossEntropy(logits: MatrixView, targets: DeviceBuffer, into nll: DeviceBuffer) throws(SheafError)

    /// kl[r] = KL(softmax(reference[r]) ‖ softmax(logits[r])) = Σ_c p_c·(log p_c − log q_c) ≥ 0,
    /// nats, for reference and logits (rows, vocabulary) of the same shape, kl float32 (rows):
    /// computed as S/Z_a − m_a + m_b − log Z_a + log Z_b with m the row maxima, Z the
    /// max-subtracted sums of exponentials and S = Σ e^(a−m_a)·(a − b), the sums in Float64,
    /// clamped at 0 (rounding can leave a tiny negative value for identical rows).
    func klDivergence(reference: MatrixView, logits: MatrixView, into kl: DeviceBuffer) throws(SheafError)

    /// Waits for queued work.
    func synchronize() throws(SheafError)
}

extension Backend {
    /// Uploads `values`; non-finite floats are refused with their index, so later ops see only
    /// finite inputs.
    public func upload<T: DeviceScalar>(_ values: [T], label: String = "input") throws(SheafError) -> DeviceBuffer {
        if let bad = T.firstNonFinite(values) {
            throw .nonFinite(op: "upload", what: "\(label) at element \(bad) (\(values[bad]))")
        }
        return try withBytes(of: values) { (raw) throws(SheafError) in try uploadBytes(raw, as: T.scalarType) }
    }

    public func download<T: DeviceScalar>(_ buffer: DeviceBuffer, as type: T.Type = T.self) throws(SheafError) -> [T] {
        guard buffer.scalar == T.scalarType else {
            throw .invalidArgument(op: "download", detail: "buffer holds \(buffer.scalar), asked for \(T.scalarType)")
        }
        var out = [T](repeating: T.zero, count: buffer.count)
        try withMutableBytes(of: &out) { (raw) throws(SheafError) in try downloadBytes(buffer, into: raw) }
        return out
    }

    /// Uploads a host matrix and returns a contiguous view of it.
    public func upload<T: DeviceScalar>(_ m: Matrix<T>, label: String = "input") throws(SheafError) -> MatrixView {
        try MatrixView(upload(m.values, label: label), rows: m.rows, cols: m.cols)
    }

    /// Downloads a (possibly strided) view into a contiguous host matrix.
    public func download<T: DeviceScalar>(_ view: MatrixView, as type: T.Type = T.self) throws(SheafError) -> Matrix<T> {
        let all: [T] = try download(view.buffer)
        var values = [T]()
        values.reserveCapacity(view.rows * view.cols)
        for r in 0..<view.rows {
            let start = view.offset + r * view.rowStride
            values.append(contentsOf: all[start..<start + view.cols])
        }
        return Matrix(unchecked: view.rows, view.cols, values)
    }

    /// A zero matrix of the given shape, contiguous.
    public func zeros(_ scalar: ScalarType, rows: Int, cols: Int) throws(SheafError) -> MatrixView {
        try MatrixView(makeBuffer(scalar, count: rows * cols), rows: rows, cols: cols)
    }

    public func cholesky(_ a: Matrix<Double>) throws(SheafError) -> CholeskyFactor {
        try cholesky(a, epsilon: 1e-6)
    }
}

/// `withUnsafeBytes` for typed throws: the standard library's `rethrows` erases the error type.
func withBytes<T, R>(of array: [T], _ body: (UnsafeRawBufferPointer) throws(SheafError) -> R) throws(SheafError) -> R {
    let result: Result<R, SheafError> = array.withUnsafeBytes { raw in
        do throws(SheafError) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
}

func withMutableBytes<T, R>(of array: inout [T], _ body: (UnsafeMutableRawBufferPointer) throws(SheafError) -> R)
    throws(SheafError) -> R
{
    let result: Result<R, SheafError> = array.withUnsafeMutableBytes { raw in
        do throws(SheafError) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
}
