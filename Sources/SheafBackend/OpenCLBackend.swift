import COpenCL
import Foundation
import SheafCore

/// The OpenCL path: the large products (GEMM, Gram, whitening products and solves, K-means
/// distances and reductions) run as kernels from kernels/*.cl; Cholesky and eigenvalues go to
/// LAPACK on the host in Float64, as on `cpu`.
public final class OpenCLBackend: Backend, @unchecked Sendable {
    public let kind = BackendKind.opencl
    let runtime: OpenCLRuntime

    /// `device`: an index or a name substring (see `OpenCLDevices`); nil picks the first GPU,
    /// else the first device. `kernelDirectory`: load kernels/*.cl from there instead of the
    /// embedded copies. Throws `backendUnavailable` or the driver's error; never falls back.
    /// `tunables`: kernel build parameters; nil takes `KernelTunables.forDevice`. The parity
    /// tests run the GPU variant on PoCL this way.
    public init(device: String? = nil, kernelDirectory: String? = nil, tunables: KernelTunables? = nil)
        throws(SheafError)
    {
        runtime = try OpenCLRuntime.shared(device: device, kernelDirectory: kernelDirectory)
        self.tunables = tunables ?? KernelTunables.forDevice(runtime.info)
        guard self.tunables.tileSize > 0, self.tunables.tileSize % 8 == 0, self.tunables.reductionStep > 0 else {
            throw .invalidArgument(op: "OpenCLBackend", detail: "tile size must be a positive multiple of 8, got \(self.tunables)")
        }
    }

    public var device: OpenCLDeviceInfo { runtime.info }
    public let tunables: KernelTunables
    public var deviceName: String { "\(runtime.info.name) (\(runtime.info.platform), \(runtime.info.type))" }

    /// Builds every kernel file now, so a driver that cannot compile one fails here.
    public func buildAllKernels() throws(SheafError) {
        for (kernel, file) in [
            ("gemm_f32", "gemm"), ("gram_accumulate", "gram"), ("lower_multiply", "whiten"),
            ("kmeans_distances", "kmeans"), ("rms_norm", "forward"),
        ] { _ = try runtime.kernel(kernel, in: file, tunables) }
    }

    // MARK: memory

    public func makeBuffer(_ scalar: ScalarType, count: Int) throws(SheafError) -> DeviceBuffer {
        guard count >= 0 else { throw .invalidArgument(op: "makeBuffer", detail: "negative count \(count)") }
        let bytes = max(count * scalar.byteSize, 16)
        var code: cl_int = 0
        guard let mem = clCreateBuffer(runtime.context, cl_mem_flags(CL_MEM_READ_WRITE), bytes, nil, &code),
            code == CL_SUCCESS
        else { throw .openCL(call: "clCreateBuffer", code: code, detail: "\(bytes) bytes") }
        let storage = CLStorage(mem)
        var zero: UInt8 = 0
        try clCheck(
            clEnqueueFillBuffer(runtime.queue, mem, &zero, 1, 0, bytes, 0, nil, nil), "clEnqueueFillBuffer",
            "\(bytes) bytes")
        return DeviceBuffer(scalar: scalar, count: count, owner: ObjectIdentifier(self), storage: storage)
    }

    public func uploadBytes(_ bytes: UnsafeRawBufferPointer, as scalar: ScalarType) throws(SheafError) -> DeviceBuffer {
        guard bytes.count % scalar.byteSize == 0 else {
            throw .invalidArgument(op: "upload", detail: "\(bytes.count) bytes is not a whole number of \(scalar)")
        }
        let buffer = try makeBuffer(scalar, count: bytes.count / scalar.byteSize)
        if let base = bytes.baseAddress, bytes.count > 0 {
            try clCheck(
                clEnqueueWriteBuffer(runtime.queue, mem(buffer), cl_bool(CL_TRUE), 0, bytes.count, base, 0, nil, nil),
                "clEnqueueWriteBuffer", "\(bytes.count) bytes")
        }
        return buffer
    }

    public func downloadBytes(_ buffer: DeviceBuffer, into bytes: UnsafeMutableRawBufferPointer) throws(SheafError) {
        guard buffer.owner == ObjectIdentifier(self), bytes.count == buffer.byteCount else {
            throw .invalidArgument(op: "download", detail: "buffer of \(buffer.byteCount) bytes into \(bytes.count)")
        }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        try clCheck(
            clEnqueueReadBuffer(runtime.queue, mem(buffer), cl_bool(CL_TRUE), 0, bytes.count, base, 0, nil, nil),
            "clEnqueueReadBuffer", "\(bytes.count) bytes")
    }

    public func synchronize() throws(SheafError) { try runtime.finish() }

    func mem(_ buffer: DeviceBuffer) -> cl_mem { (buffer.storage as! CLStorage).mem }

    private var tileGroup: [Int] { [tunables.tileSize / 8, tunables.tileSize / 8] }

    /// Global size covering an (rows, cols) output with TS x TS tiles of WG x WG work-items.
    private func tiledGlobal(rows: Int, cols: Int) -> [Int] {
        let ts = tunables.tileSize, wg = ts / 8
        return [(cols + ts - 1) / ts * wg, (rows + ts - 1) / ts * wg]
    }

    /// A contiguous transposed copy, (cols, rows): CPU drivers need the right operand of a
    /// product row-contiguous (kernels/common.cl, USE_LOCAL = 0).
    private func transposed(_ v: MatrixView) throws(SheafError) -> MatrixView {
        let out = try zeros(.float32, rows: v.cols, cols: v.rows)
        try runtime.launch(
            "transpose_f32", in: "gemm", tunables, global: [v.cols, v.rows], local: nil,
            [.int(v.rows), .int(v.cols), .buffer(v.buffer), .int(v.offset), .int(v.rowStride),
             .buffer(out.buffer), .int(0), .int(out.rowStride)])
        return out
    }

    // MARK: products

    public func gemm(
        _ a: MatrixView, transposeA: Bool, _ b: MatrixView, transposeB: Bool, into c: MatrixView,
        alpha: Float, beta: Float
    ) throws(SheafError) {
        try Check.owner(self, [a, b, c], op: "gemm")
        let (m, n, k) = try Check.gemm(a, transposeA, b, transposeB, c)
        // op(A)(i, p) = a[i*sAm + p*sAk]; op(B)(p, j) = b[p*sBk + j*sBn].
        let (sAm, sAk) = transposeA ? (1, a.rowStride) : (a.rowStride, 1)
        var right = b
        var (sBk, sBn) = transposeB ? (1, b.rowStride) : (b.rowStride, 1)
        if !tunables.useLocalMemory && sBn != 1 {
            right = try transposed(b)
            (sBk, sBn) = (right.rowStride, 1)
        }
        try runtime.launch(
            "gemm_f32", in: "gemm", tunables, global: tiledGlobal(rows: m, cols: n), local: tileGroup,
            [.int(m), .int(n), .int(k),
             .buffer(a.buffer), .int(a.offset), .int(sAm), .int(sAk),
             .buffer(right.buffer), .int(right.offset), .int(sBk), .int(sBn),
             .buffer(c.buffer), .int(c.offset), .int(c.rowStride), .float(alpha), .float(beta)])
    }

    public func accumulateGram(_ x: MatrixView, into gram: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, gram], op: "accumulateGram")
        try Check.gram(x, gram)
        try runtime.launch(
            "gram_accumulate", in: "gram", tunables, global: tiledGlobal(rows: x.cols, cols: x.cols), local: tileGroup,
            [.int(x.rows), .int(x.cols), .buffer(x.buffer), .int(x.offset), .int(x.rowStride),
             .buffer(gram.buffer), .int(gram.offset), .int(gram.rowStride)])
    }

    public func cholesky(_ a: Matrix<Double>, epsilon: Double) throws(SheafError) -> CholeskyFactor {
        try LAPACK.cholesky(a, epsilon: epsilon)
    }

    private static let whitenTile = 16  // WT in kernels/whiten.cl

    public func multiplyLower(_ w: MatrixView, _ lower: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [w, lower, out], op: "multiplyLower")
        try Check.multiplyLower(w, lower, out)
        let wt = Self.whitenTile
        try runtime.launch(
            "lower_multiply", in: "whiten", tunables, global: [w.cols, w.rows], local: [wt, wt],
            [.int(w.rows), .int(w.cols), .buffer(w.buffer), .int(w.offset), .int(w.rowStride),
             .buffer(lower.buffer), .int(lower.offset), .int(lower.rowStride),
             .buffer(out.buffer), .int(out.offset), .int(out.rowStride)])
    }

    public func solveLowerRight(_ y: MatrixView, _ lower: MatrixView) throws(SheafError) {
        try Check.owner(self, [y, lower], op: "solveLowerRight")
        try Check.solveLower(y, lower)
        // The diagonal is n values: checked on the host rather than dividing by zero on the device.
        let l: Matrix<Double> = try download(lower)
        for i in 0..<l.rows where l[i, i] == 0 || !l[i, i].isFinite {
            throw .invalidArgument(op: "solveLowerRight", detail: "lower[\(i), \(i)] = \(l[i, i])")
        }
        try runtime.launch(
            "lower_solve_right", in: "whiten", tunables, global: [y.rows], local: nil,
            [.int(y.rows), .int(y.cols), .buffer(y.buffer), .int(y.offset), .int(y.rowStride),
             .buffer(lower.buffer), .int(lower.offset), .int(lower.rowStride)])
    }

    // MARK: K-means

    public func kmeansDistances(points: MatrixView, centroids: MatrixView, into distances: MatrixView)
        throws(SheafError)
    {
        try Check.owner(self, [points, centroids, distances], op: "kmeansDistances")
        try Check.kmeansDistances(points, centroids, distances)
        let m = points.rows, k = centroids.rows, d = points.cols
        let pNorms = try makeBuffer(.float32, count: m), cNorms = try makeBuffer(.float32, count: k)
        for (v, out) in [(points, pNorms), (centroids, cNorms)] {
            try runtime.launch(
                "row_sq_norms", in: "kmeans", tunables, global: [v.rows], local: nil,
                [.int(v.rows), .int(v.cols), .buffer(v.buffer), .int(v.offset), .int(v.rowStride), .buffer(out)])
        }
        // B(j, c) = C(c, j); CPU drivers read a transposed copy so B is row-contiguous.
        var right = centroids
        var (sBk, sBn) = (1, centroids.rowStride)
        if !tunables.useLocalMemory {
            right = try transposed(centroids)
            (sBk, sBn) = (right.rowStride, 1)
        }
        try runtime.launch(
            "kmeans_distances", in: "kmeans", tunables, global: tiledGlobal(rows: m, cols: k), local: tileGroup,
            [.int(m), .int(k), .int(d), .buffer(points.buffer), .int(points.offset), .int(points.rowStride),
             .buffer(right.buffer), .int(right.offset), .int(sBk), .int(sBn),
             .buffer(pNorms), .buffer(cNorms),
             .buffer(distances.buffer), .int(distances.offset), .int(distances.rowStride)])
    }

    public func kmeansAssign(distances: MatrixView, labels: DeviceBuffer, minima: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [distances], [labels, minima], op: "kmeansAssign")
        try Check.kmeansAssign(distances, labels, minima)
        try runtime.launch(
            "kmeans_argmin", in: "kmeans", tunables, global: [distances.rows], local: nil,
            [.int(distances.rows), .int(distances.cols), .buffer(distances.buffer), .int(distances.offset),
             .int(distances.rowStride), .buffer(labels), .buffer(minima)])
    }

    /// The host buckets point indices by label (a counting sort over m labels); the kernel then
    /// sums each cluster's rows, one work-item per (column, cluster).
    public func kmeansAccumulate(points: MatrixView, labels: DeviceBuffer, sums: MatrixView, counts: DeviceBuffer)
        throws(SheafError)
    {
        try Check.owner(self, [points, sums], [labels, counts], op: "kmeansAccumulate")
        try Check.kmeansAccumulate(points, labels, sums, counts)
        let k = sums.rows, m = points.rows
        let all: [Int32] = try download(labels)
        var starts = [Int32](repeating: 0, count: k + 1)
        for i in 0..<m {
            try Check.label(all[i], at: i, k: k)
            starts[Int(all[i]) + 1] += 1
        }
        for c in 0..<k { starts[c + 1] += starts[c] }
        var next = starts
        var order = [Int32](repeating: 0, count: m)
        for i in 0..<m {
            let c = Int(all[i])
            order[Int(next[c])] = Int32(i)
            next[c] += 1
        }
        let orderBuffer = try upload(order), startsBuffer = try upload(starts)
        try runtime.launch(
            "kmeans_sums", in: "kmeans", tunables, global: [points.cols, k], local: nil,
            [.int(points.cols), .int(k), .buffer(points.buffer), .int(points.offset), .int(points.rowStride),
             .buffer(orderBuffer), .buffer(startsBuffer),
             .buffer(sums.buffer), .int(sums.offset), .int(sums.rowStride)])
        let countValues = (0..<k).map { starts[$0 + 1] - starts[$0] } + [Int32](repeating: 0, count: counts.count - k)
        try withBytes(of: countValues) { (raw) throws(SheafError) in
            try clCheck(
                clEnqueueWriteBuffer(runtime.queue, mem(counts), cl_bool(CL_TRUE), 0, raw.count, raw.baseAddress, 0, nil, nil),
                "clEnqueueWriteBuffer", "counts")
        }
    }
}
