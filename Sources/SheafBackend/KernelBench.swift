import COpenBLAS
import Foundation
import SheafCore

/// One measured op: the best of several timed runs after a warm-up.
public struct BenchResult: Sendable, Codable {
    public var op: String
    /// "cpu", "opencl", or "openblas" for the plain OpenBLAS baseline (ssyrk, sgemm).
    public var backend: String
    public var shape: String
    public var seconds: Double
    public var gflops: Double
    /// Bytes moved per second, for the bandwidth-bound ops.
    public var gbPerSecond: Double?
    /// gflops over the OpenBLAS baseline on the same data, where there is one.
    public var ratioToOpenBLAS: Double?
}

public struct BenchReport: Sendable, Codable {
    public var machine: MachinePeak
    public var threads: Int
    public var openCLDevice: String?
    public var results: [BenchResult]

    public init(machine: MachinePeak, threads: Int, openCLDevice: String?, results: [BenchResult]) {
        self.machine = machine
        self.threads = threads
        self.openCLDevice = openCLDevice
        self.results = results
    }
}

/// The float32 peak of the host CPU: cores × clock × flops per cycle (FMA width × 2 FMA units).
public struct MachinePeak: Sendable, Codable {
    public var cores: Int
    public var clockGHz: Double
    public var flopsPerCycle: Int
    public var isa: String
    public var gflops: Double { Double(cores) * clockGHz * Double(flopsPerCycle) }

    public static func detect(cores: Int) -> MachinePeak {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = Set(info.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
        let mhz = info.split(separator: "\n").first { $0.hasPrefix("cpu MHz") }
            .flatMap { Double($0.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) } ?? 0
        let (isa, perCycle): (String, Int) =
            flags.contains("avx512f") ? ("AVX-512", 64)
            : flags.contains("avx2") && flags.contains("fma") ? ("AVX2+FMA", 32)
            : flags.contains("avx") ? ("AVX", 16) : ("SSE", 8)
        return MachinePeak(cores: cores, clockGHz: mhz / 1000, flopsPerCycle: perCycle, isa: isa)
    }
}

/// `sheaf bench kernels`: throughput of every op on each backend at realistic sizes, next to
/// OpenBLAS on the same data.
public enum KernelBench {
    public struct Sizes: Sendable {
        public var gramRows = 8192
        public var gramDims = [576, 1536, 4096]
        public var gemmSize = 2048
        public var kmeansPoints = 4096, kmeansDim = 4096, kmeansClusters = 256
        public var minSeconds = 1.0
        public init() {}

        /// Small sizes for a smoke run (tests, quick checks).
        public static var quick: Sizes {
            var s = Sizes()
            s.gramRows = 512; s.gramDims = [96]; s.gemmSize = 128
            s.kmeansPoints = 256; s.kmeansDim = 128; s.kmeansClusters = 16; s.minSeconds = 0.05
            return s
        }
    }

    /// Best time of `body` over runs totalling at least `minSeconds` (at least 2), after one warm-up.
    static func time(minSeconds: Double, _ body: () throws(SheafError) -> Void) throws(SheafError) -> Double {
        try body()
        var best = Double.infinity, total = 0.0, runs = 0
        while runs < 2 || total < minSeconds {
            let t0 = monotonicSeconds()
            try body()
            let dt = monotonicSeconds() - t0
            best = min(best, dt)
            total += dt
            runs += 1
        }
        return best
    }

    public static func run(
        backends: [any Backend], sizes: Sizes = Sizes(), progress: (String) -> Void = { _ in }
    ) throws(SheafError) -> [BenchResult] {
        var results: [BenchResult] = []
        func add(_ op: String, _ backend: String, _ shape: String, _ seconds: Double, flops: Double, bytes: Double? = nil) {
            results.append(BenchResult(
                op: op, backend: backend, shape: shape, seconds: seconds, gflops: flops / seconds / 1e9,
                gbPerSecond: bytes.map { $0 / seconds / 1e9 }))
            progress("\(op) \(backend) \(shape): \(String(format: "%.3f", seconds)) s")
        }

        // Gram: rows·d² flops counted as for syrk (the symmetric half, 2 flops per multiply-add).
        for d in sizes.gramDims {
            let x = Matrix<Float>.random(rows: sizes.gramRows, cols: d, seed: UInt64(d))
            let shape = "\(sizes.gramRows) x \(d)"
            let flops = Double(sizes.gramRows) * Double(d) * Double(d + 1)
            var scratch = [Float](repeating: 0, count: d * d)
            let t = try time(minSeconds: sizes.minSeconds) { () throws(SheafError) in
                x.values.withUnsafeBufferPointer { xp in
                    scratch.withUnsafeMutableBufferPointer { c in
                        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(d), Int32(sizes.gramRows), 1,
                                    xp.baseAddress, Int32(d), 0, c.baseAddress, Int32(d))
                    }
                }
            }
            add("gram", "openblas ssyrk", shape, t, flops: flops)
            for be in backends {
                let xv = try be.upload(x), g = try be.zeros(.float64, rows: d, cols: d)
                let t = try time(minSeconds: sizes.minSeconds) { () throws(SheafError) in
                    try be.accumulateGram(xv, into: g)
                    try be.synchronize()
                }
                add("gram", be.kind.rawValue, shape, t, flops: flops)
            }
        }

        // GEMM n³: 2n³ flops.
        let n = sizes.gemmSize
        let a = Matrix<Float>.random(rows: n, cols: n, seed: 1), b = Matrix<Float>.random(rows: n, cols: n, seed: 2)
        var c = [Float](repeating: 0, count: n * n)
        let gemmFlops = 2 * Double(n) * Double(n) * Double(n)
        let tg = try time(minSeconds: sizes.minSeconds) { () throws(SheafError) in
            c.withUnsafeMutableBufferPointer { cp in
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1,
                            a.values, Int32(n), b.values, Int32(n), 0, cp.baseAddress, Int32(n))
            }
        }
        add("gemm", "openblas sgemm", "\(n)³", tg, flops: gemmFlops)
        for be in backends {
            let av = try be.upload(a), bv = try be.upload(b), cv = try be.zeros(.float32, rows: n, cols: n)
            let t = try time(minSeconds: sizes.minSeconds) { () throws(SheafError) in
                try be.gemm(av, transposeA: false, bv, transposeB: false, into: cv, alpha: 1, beta: 0)
                try be.synchronize()
            }
            add("gemm", be.kind.rawValue, "\(n)³", t, flops: gemmFlops)
        }

        // K-means: distances 2·m·k·d flops; assignment and sums are bandwidth-bound.
        let (m, d, k) = (sizes.kmeansPoints, sizes.kmeansDim, sizes.kmeansClusters)
        let points = Matrix<Float>.random(rows: m, cols: d, seed: 3), cents = Matrix<Float>.random(rows: k, cols: d, seed: 4)
        var rng = SplitMix64(seed: 5)
        let randomLabels = (0..<m).map { _ in Int32(rng.next() % UInt64(k)) }
        for be in backends {
            let pv = try be.upload(points), cv = try be.upload(cents), dist = try be.zeros(.float32, rows: m, cols: k)
            let t = try time(minSeconds: sizes.minSeconds) { () throws(SheafError) in
                try be.kmeansDistances(points: pv, centroids: cv, into: dist)
                try be.synchronize()
            }
            add("kmeansDistances", be.kind.rawValue, "m \(m) d \(d) k \(k)", t, flops: 2 * Double(m * k) * Double(d))
            let labels = try be.makeBuffer(.int32, count: m), minima = try be.makeBuffer(.float32, count: m)
            let ta = try time(minSeconds: sizes.minSeconds) { () throws(SheafError) in
                try be.kmeansAssign(distances: dist, labels: labels, minima: minima)
                try be.synchronize()
            }
            add("kmeansAssign", be.kind.rawValue, "m \(m) k \(k)", ta, flops: Double(m * k), bytes: Double(m * k * 4))
            let lv = try be.upload(randomLabels)
            let sums = try be.zeros(.float64, rows: k, cols: d), counts = try be.makeBuffer(.int32, count: k)
            let ts = try time(minSeconds: sizes.minSeconds) { () throws(SheafError) in
                try be.kmeansAccumulate(points: pv, labels: lv, sums: sums, counts: counts)
                try be.synchronize()
            }
            add("kmeansAccumulate", be.kind.rawValue, "m \(m) d \(d) k \(k)", ts, flops: Double(m * d),
                bytes: Double(m * d * 4 + k * d * 8))
        }

        // Ratios to the OpenBLAS baseline on the same op and shape.
        for i in results.indices where !results[i].backend.hasPrefix("openblas") {
            if let base = results.first(where: {
                $0.backend.hasPrefix("openblas") && $0.op == results[i].op && $0.shape == results[i].shape
            }) { results[i].ratioToOpenBLAS = results[i].gflops / base.gflops }
        }
        return results
    }
}
