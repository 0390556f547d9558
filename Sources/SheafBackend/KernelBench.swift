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
    public static let families: Set<String> = ["gram", "gemm", "kmeans"]

    public struct Sizes: Sendable {
        public var gramRows = 8192
        public var gramDims = [576, 1536, 4096]
        public var gemmSize = 2048
        public var kmeansPoints = 4096, kmeansDim = 4096, kmeansClusters = 256
        public var minSeconds = 1.0
        /// Which op families to run: "gram", "gemm", "kmeans".
        public var families: Set<String> = KernelBench.families
        public init() {}

        /// Small sizes for a smoke run (tests, quick checks).
        public static var quick: Sizes {
            var s = Sizes()
            s.gramRows = 512; s.gramDims = [96]; s.gemmSize = 128
            s.kmeansPoints = 256; s.kmeansDim = 128; s.kmeansClusters = 16; s.minSeconds = 0.05
            return s
        }
    }

    /// One timed body: an op on one backend (or the OpenBLAS baseline) at one shape.
    struct Case {
        var op: String
        var backend: String
        var shape: String
        var flops: Double
        var bytes: Double?
        var body: () throws(SheafError) -> Void
    }

    /// Best time of each case. The cases of one op and shape are run round-robin (after a
    /// warm-up of each) until every one has run at least twice and `minSeconds` have passed, so
    /// a burst of load from other processes hits them alike and the ratios stay fair.
    static func timeRoundRobin(_ cases: [Case], minSeconds: Double) throws(SheafError) -> [Double] {
        for c in cases { try c.body() }
        var best = [Double](repeating: .infinity, count: cases.count)
        var total = 0.0, rounds = 0
        while rounds < 2 || total < minSeconds {
            for (i, c) in cases.enumerated() {
                let t0 = monotonicSeconds()
                try c.body()
                let dt = monotonicSeconds() - t0
                best[i] = min(best[i], dt)
                total += dt
            }
            rounds += 1
        }
        return best
    }

    public static func run(
        backends: [any Backend], sizes: Sizes = Sizes(), progress: (String) -> Void = { _ in }
    ) throws(SheafError) -> [BenchResult] {
        var results: [BenchResult] = []
        func measure(_ cases: [Case]) throws(SheafError) {
            let times = try timeRoundRobin(cases, minSeconds: sizes.minSeconds)
            for (c, t) in zip(cases, times) {
                results.append(BenchResult(
                    op: c.op, backend: c.backend, shape: c.shape, seconds: t, gflops: c.flops / t / 1e9,
                    gbPerSecond: c.bytes.map { $0 / t / 1e9 }))
                progress("\(c.op) \(c.backend) \(c.shape): \(String(format: "%.4f", t)) s")
            }
        }

        // Gram: rows·d·(d+1) flops, counted as for syrk (the symmetric half, 2 per multiply-add).
        if sizes.families.contains("gram") {
            for d in sizes.gramDims {
                let rows = sizes.gramRows
                let x = Matrix<Float>.random(rows: rows, cols: d, seed: UInt64(d))
                let shape = "\(rows) x \(d)", flops = Double(rows) * Double(d) * Double(d + 1)
                var scratch = [Float](repeating: 0, count: d * d)
                var cases = [Case(op: "gram", backend: "openblas ssyrk", shape: shape, flops: flops) {
                    x.values.withUnsafeBufferPointer { xp in
                        scratch.withUnsafeMutableBufferPointer { c in
                            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(d), Int32(rows), 1,
                                        xp.baseAddress, Int32(d), 0, c.baseAddress, Int32(d))
                        }
                    }
                }]
                for be in backends {
                    let xv = try be.upload(x), g = try be.zeros(.float64, rows: d, cols: d)
                    cases.append(Case(op: "gram", backend: be.kind.rawValue, shape: shape, flops: flops) { () throws(SheafError) in
                        try be.accumulateGram(xv, into: g)
                        try be.synchronize()
                    })
                }
                try measure(cases)
            }
        }

        // GEMM n³: 2n³ flops.
        if sizes.families.contains("gemm") {
            let n = sizes.gemmSize, shape = "\(n)³", flops = 2 * Double(n) * Double(n) * Double(n)
            let a = Matrix<Float>.random(rows: n, cols: n, seed: 1), b = Matrix<Float>.random(rows: n, cols: n, seed: 2)
            var c = [Float](repeating: 0, count: n * n)
            var cases = [Case(op: "gemm", backend: "openblas sgemm", shape: shape, flops: flops) {
                c.withUnsafeMutableBufferPointer { cp in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1,
                                a.values, Int32(n), b.values, Int32(n), 0, cp.baseAddress, Int32(n))
                }
            }]
            for be in backends {
                let av = try be.upload(a), bv = try be.upload(b), cv = try be.zeros(.float32, rows: n, cols: n)
                cases.append(Case(op: "gemm", backend: be.kind.rawValue, shape: shape, flops: flops) { () throws(SheafError) in
                    try be.gemm(av, transposeA: false, bv, transposeB: false, into: cv, alpha: 1, beta: 0)
                    try be.synchronize()
                })
            }
            try measure(cases)
        }

        // K-means: distances 2·m·k·d flops (a GEMM); assignment and sums are bandwidth-bound.
        if sizes.families.contains("kmeans") {
            let (m, d, k) = (sizes.kmeansPoints, sizes.kmeansDim, sizes.kmeansClusters)
            let points = Matrix<Float>.random(rows: m, cols: d, seed: 3)
            let cents = Matrix<Float>.random(rows: k, cols: d, seed: 4)
            var rng = SplitMix64(seed: 5)
            let randomLabels = (0..<m).map { _ in Int32(rng.next() % UInt64(k)) }
            var distances: [Case] = [], assign: [Case] = [], sums: [Case] = []
            for be in backends {
                let name = be.kind.rawValue
                let pv = try be.upload(points), cv = try be.upload(cents), dist = try be.zeros(.float32, rows: m, cols: k)
                let labels = try be.makeBuffer(.int32, count: m), minima = try be.makeBuffer(.float32, count: m)
                let lv = try be.upload(randomLabels)
                let sv = try be.zeros(.float64, rows: k, cols: d), counts = try be.makeBuffer(.int32, count: k)
                distances.append(Case(op: "kmeansDistances", backend: name, shape: "m \(m) d \(d) k \(k)",
                                      flops: 2 * Double(m * k) * Double(d)) { () throws(SheafError) in
                    try be.kmeansDistances(points: pv, centroids: cv, into: dist)
                    try be.synchronize()
                })
                assign.append(Case(op: "kmeansAssign", backend: name, shape: "m \(m) k \(k)", flops: Double(m * k),
                                   bytes: Double(m * k * 4)) { () throws(SheafError) in
                    try be.kmeansAssign(distances: dist, labels: labels, minima: minima)
                    try be.synchronize()
                })
                sums.append(Case(op: "kmeansAccumulate", backend: name, shape: "m \(m) d \(d) k \(k)", flops: Double(m * d),
                                 bytes: Double(m * d * 4 + k * d * 8)) { () throws(SheafError) in
                    try be.kmeansAccumulate(points: pv, labels: lv, sums: sv, counts: counts)
                    try be.synchronize()
                })
            }
            try measure(distances)
            try measure(assign)
            try measure(sums)
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
