import COpenBLAS
import SheafCPUKernels
import Foundation
import SheafCore

/// The CPU path: products through OpenBLAS (cblas), factorisations through its LAPACK.
public final class CPUBackend: HostMemoryBackend, @unchecked Sendable {
    public let kind = BackendKind.cpu
    public let threads: Int
    /// Whether the forward pass's row loops run on SheafCPUKernels' vectors (AVX2 + FMA on
    /// x86-64) rather than the portable scalar loops.
    public let vectorKernels: Bool
    /// cos/sin of RoPE angles per position, computed once per (head dim, theta), not per layer.
    let ropeTables = RoPETables()
    /// Float32 chunk Gram, reused across `accumulateGram` calls.
    private var gramScratch: [Float] = []
    private let scratchLock = NSLock()

    /// `threads`: OpenBLAS threads (a process-wide OpenBLAS setting); nil keeps its default
    /// (all cores). `vectorKernels`: use the vector loops when this CPU can run them (false keeps
    /// the portable loops everywhere, for parity checks).
    public init(threads: Int? = nil, vectorKernels: Bool = true) {
        if let threads, threads > 0 { openblas_set_num_threads(Int32(threads)) }
        self.threads = Int(openblas_get_num_threads())
        self.vectorKernels = vectorKernels && CPUFeatures.vectorKernels
    }

    public static var openBLASCore: String { String(cString: openblas_get_corename()) }
    public static var openBLASConfig: String { String(cString: openblas_get_config()) }

    public var deviceName: String {
        "OpenBLAS \(Self.openBLASCore), \(threads) thread\(threads == 1 ? "" : "s"), "
            + (vectorKernels ? "\(CPUFeatures.vectorISA) loops" : "portable loops")
    }

    public func gemm(
        _ a: MatrixView, transposeA: Bool, _ b: MatrixView, transposeB: Bool, into c: MatrixView,
        alpha: Float, beta: Float
    ) throws(SheafError) {
        try Check.owner(self, [a, b, c], op: "gemm")
        let (m, n, k) = try Check.gemm(a, transposeA, b, transposeB, c)
        if m == 1 && k > 0 {
            // One row (a decoded token) is a matrix-vector product. OpenBLAS 0.3.21 runs it as a
            // GEMM, packing all of op(b) first (the head: 52-57 ms a token against 8 ms as a GEMV).
            // c = alpha · x · op(b) + beta · c, i.e. cᵀ = alpha · op(b)ᵀ · xᵀ + beta · cᵀ.
            if beta == 0 { floats(c).update(repeating: 0, count: n) }  // beta = 0: c is not read
            cblas_sgemv(
                CblasRowMajor, transposeB ? CblasNoTrans : CblasTrans, Int32(b.rows), Int32(b.cols), alpha, floats(b),
                Int32(b.rowStride), floats(a), transposeA ? Int32(a.rowStride) : 1, beta, floats(c), 1)
            return
        }
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, floats(a), Int32(a.rowStride), floats(b), Int32(b.rowStride),
            beta, floats(c), Int32(c.rowStride))
    }

    /// ssyrk of the chunk into a float32 scratch (upper triangle), then added into the Float64
    /// accumulator and mirrored. The chunk product costs rows·d² flops; the add touches d²/2
    /// elements, and runs on all cores in 64 x 64 blocks, so the mirrored writes stay within
    /// 64 rows in cache instead of striding down whole columns. The scratch is kept between
    /// calls: a fresh d² buffer costs a page fault per 4 KiB on every chunk.
    public func accumulateGram(_ x: MatrixView, into gram: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, gram], op: "accumulateGram")
        try Check.gram(x, gram)
        let d = x.cols
        scratchLock.lock()
        defer { scratchLock.unlock() }
        if gramScratch.count < d * d { gramScratch = [Float](repeating: 0, count: d * d) }
        gramScratch.withUnsafeMutableBufferPointer { c in
            cblas_ssyrk(
                CblasRowMajor, CblasUpper, CblasTrans, Int32(d), Int32(x.rows), 1, floats(x), Int32(x.rowStride), 0,
                c.baseAddress, Int32(d))
        }
        let g = doubles(gram), ld = gram.rowStride, block = 64
        let blockRows = (d + block - 1) / block
        gramScratch.withUnsafeBufferPointer { scratch in
            // Workers write disjoint blocks (and their mirrors) of g.
            nonisolated(unsafe) let c = scratch.baseAddress!, g = g
            // Block row bi has (blockRows − bi) blocks: interleave rows across workers for balance.
            let workers = min(threads, blockRows)
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                for bRow in stride(from: worker, to: blockRows, by: workers) {
                    let bi = bRow * block
                    for bj in stride(from: bi, to: d, by: block) {
                        for i in bi..<min(bi + block, d) {
                            let gRow = g + i * ld, cRow = c + i * d
                            for j in max(bj, i)..<min(bj + block, d) {
                                let v = gRow[j] + Double(cRow[j])
                                gRow[j] = v
                                g[j * ld + i] = v
                            }
                        }
                    }
                }
            }
        }
    }

    public func cholesky(_ a: Matrix<Double>, epsilon: Double) throws(SheafError) -> CholeskyFactor {
        try LAPACK.cholesky(a, epsilon: epsilon)
    }

    /// dtrmm (right, lower) on a Float64 copy of w.
    public func multiplyLower(_ w: MatrixView, _ lower: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [w, lower, out], op: "multiplyLower")
        try Check.multiplyLower(w, lower, out)
        let src = floats(w), dst = doubles(out)
        for r in 0..<w.rows {
            for c in 0..<w.cols { dst[r * out.rowStride + c] = Double(src[r * w.rowStride + c]) }
        }
        cblas_dtrmm(
            CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, Int32(out.rows), Int32(out.cols), 1,
            doubles(lower), Int32(lower.rowStride), dst, Int32(out.rowStride))
    }

    /// dtrsm (right, lower): substitution, no inverse formed.
    public func solveLowerRight(_ y: MatrixView, _ lower: MatrixView) throws(SheafError) {
        try Check.owner(self, [y, lower], op: "solveLowerRight")
        try Check.solveLower(y, lower)
        try checkDiagonal(lower)
        cblas_dtrsm(
            CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, Int32(y.rows), Int32(y.cols), 1,
            doubles(lower), Int32(lower.rowStride), doubles(y), Int32(y.rowStride))
    }

    private func checkDiagonal(_ lower: MatrixView) throws(SheafError) {
        let l = doubles(lower)
        for i in 0..<lower.rows where l[i * lower.rowStride + i] == 0 || !l[i * lower.rowStride + i].isFinite {
            throw .invalidArgument(op: "solveLowerRight", detail: "lower[\(i), \(i)] = \(l[i * lower.rowStride + i])")
        }
    }

    /// −2·P·Cᵀ through sgemm, then the squared norms added per row and column.
    public func kmeansDistances(points: MatrixView, centroids: MatrixView, into distances: MatrixView)
        throws(SheafError)
    {
        try Check.owner(self, [points, centroids, distances], op: "kmeansDistances")
        try Check.kmeansDistances(points, centroids, distances)
        try gemm(points, transposeA: false, centroids, transposeB: true, into: distances, alpha: -2, beta: 0)
        let pNorms = rowSquaredNorms(points), cNorms = rowSquaredNorms(centroids)
        let d = floats(distances)
        for i in 0..<points.rows {
            let row = d + i * distances.rowStride
            for c in 0..<centroids.rows { row[c] = max(0, row[c] + pNorms[i] + cNorms[c]) }
        }
    }

    private func rowSquaredNorms(_ v: MatrixView) -> [Float] {
        let p = floats(v)
        return (0..<v.rows).map { r in cblas_sdot(Int32(v.cols), p + r * v.rowStride, 1, p + r * v.rowStride, 1) }
    }

    public func kmeansAssign(distances: MatrixView, labels: DeviceBuffer, minima: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [distances], [labels, minima], op: "kmeansAssign")
        try Check.kmeansAssign(distances, labels, minima)
        let d = floats(distances), l = ints(labels)
        let mins = host(minima).assumingMemoryBound(to: Float.self)
        for i in 0..<distances.rows {
            let row = d + i * distances.rowStride
            var best = 0
            for c in 1..<distances.cols where row[c] < row[best] { best = c }
            l[i] = Int32(best)
            mins[i] = row[best]
        }
    }

    public func kmeansAccumulate(points: MatrixView, labels: DeviceBuffer, sums: MatrixView, counts: DeviceBuffer)
        throws(SheafError)
    {
        try Check.owner(self, [points, sums], [labels, counts], op: "kmeansAccumulate")
        try Check.kmeansAccumulate(points, labels, sums, counts)
        let k = sums.rows, d = points.cols
        let l = ints(labels), n = ints(counts), s = doubles(sums), p = floats(points)
        for i in 0..<points.rows { try Check.label(l[i], at: i, k: k) }
        for c in 0..<k {
            n[c] = 0
            for j in 0..<d { s[c * sums.rowStride + j] = 0 }
        }
        for i in 0..<points.rows {
            let c = Int(l[i])
            n[c] += 1
            let row = p + i * points.rowStride, acc = s + c * sums.rowStride
            for j in 0..<d { acc[j] += Double(row[j]) }
        }
    }
}

/// What the CPU offers SheafCPUKernels, which is compiled for AVX2 + FMA on x86-64.
public enum CPUFeatures {
    /// True when this CPU runs SheafCPUKernels: on x86-64 when /proc/cpuinfo lists the flags of
    /// the ISA it was compiled for (avx2 and fma; the kernel drops them when the OS does not save
    /// the wide registers); on arm64 always.
    public static let vectorKernels: Bool = {
        #if arch(x86_64)
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
            let flags = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return false }
        let names = Set(flags.split(separator: " ").map(String.init))
        return KernelISA.requiredFlags.allSatisfy(names.contains)
        #else
        return true
        #endif
    }()

    /// The CPU as `sheaf doctor` reports it: model name and the vector extensions that decide
    /// which kernels OpenBLAS and SheafCPUKernels can run.
    public struct Description: Sendable, Codable {
        public var model: String
        public var architecture: String
        /// Of interest, in this order, those present: AVX, AVX2, FMA, AVX-512 F/BW/VL/DQ, AVX-512
        /// BF16, AVX-512 FP16, AMX (x86-64); NEON, SVE, BF16 (arm64).
        public var extensions: [String]

        public init(model: String, architecture: String, extensions: [String]) {
            (self.model, self.architecture, self.extensions) = (model, architecture, extensions)
        }
    }

    public static let description: Description = {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let lines = info.split(separator: "\n")
        func field(_ key: String) -> String? {
            lines.first { $0.hasPrefix(key) && $0.contains(":") }.map {
                String($0[$0.index(after: $0.firstIndex(of: ":")!)...]).trimmingCharacters(in: .whitespaces)
            }
        }
        #if arch(x86_64)
        let names = Set((field("flags") ?? "").split(separator: " ").map(String.init))
        let known: [(String, String)] = [
            ("avx", "AVX"), ("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512F"), ("avx512bw", "AVX-512BW"),
            ("avx512vl", "AVX-512VL"), ("avx512dq", "AVX-512DQ"), ("avx512_bf16", "AVX-512BF16"),
            ("avx512_fp16", "AVX-512FP16"), ("amx_tile", "AMX"),
        ]
        return Description(
            model: field("model name") ?? "unknown x86-64", architecture: "x86_64",
            extensions: known.filter { names.contains($0.0) }.map(\.1))
        #else
        let names = Set((field("Features") ?? "").split(separator: " ").map(String.init))
        let known: [(String, String)] = [("asimd", "NEON"), ("sve", "SVE"), ("sve2", "SVE2"), ("bf16", "BF16")]
        // arm64 has NEON in every CPU, also where /proc/cpuinfo is missing (macOS).
        var extensions = known.filter { names.contains($0.0) }.map(\.1)
        if !extensions.contains("NEON") { extensions.insert("NEON", at: 0) }
        let model = field("model name") ?? field("Model") ?? field("CPU part").map { "CPU part \($0)" } ?? "unknown arm64"
        return Description(model: model, architecture: "arm64", extensions: extensions)
        #endif
    }()

    /// "AVX2" (or "AVX-512" in a SHEAF_CPU_ISA=avx512 build) on x86-64, "NEON" on arm64.
    public static let vectorISA = KernelISA.name
}

/// RoPE's cos(p·θ^(−2i/d)) and sin(…) for positions 0..<n, i < d/2: angles in Float64, each
/// rounded once to float32 (row p at [p·d/2 ..< (p + 1)·d/2]). Grows with the longest sequence seen;
/// 30 layers × 2 projections share one table instead of each taking 2·d/2 trig calls per token.
final class RoPETables: @unchecked Sendable {
    struct Table {
        var headDim: Int
        var theta: Double
        var cosines: [Float] = [], sines: [Float] = []
        var positions: Int { cosines.count / (headDim / 2) }
    }
    private var current: Table?
    private let lock = NSLock()

    func table(headDim: Int, theta: Double, positions: Int) -> Table {
        lock.lock()
        defer { lock.unlock() }
        var t = current.flatMap { $0.headDim == headDim && $0.theta == theta ? $0 : nil } ?? Table(headDim: headDim, theta: theta)
        let half = headDim / 2
        if t.positions < positions {
            let inverse = (0..<half).map { pow(theta, -2 * Double($0) / Double(headDim)) }
            let start = t.positions
            t.cosines.reserveCapacity(positions * half)
            t.sines.reserveCapacity(positions * half)
            for position in start..<positions {
                for i in 0..<half {
                    t.cosines.append(Float(cos(Double(position) * inverse[i])))
                    t.sines.append(Float(sin(Double(position) * inverse[i])))
                }
            }
        }
        current = t
        return t
    }
}
