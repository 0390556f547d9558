import Foundation
import SheafBackend
import SheafCompress
import SheafCore

let version = "0.1.0"

/// The compression methods' names, from the registry.
let methodNames = MethodRegistry.standard.names.joined(separator: ", ")

let mainHelp = """
    sheaf \(version): compress large language models by sharing weights.

    USAGE: sheaf <command> [options]

    COMMANDS:
      doctor            List OpenCL devices and OpenBLAS, and check every op on every backend
                        against the Float64 reference (PASS/FAIL with the measured error).
      bench kernels     GFLOP/s of each numeric op per backend next to OpenBLAS and the peak.
      inspect MODEL     Architecture, shapes, stored types and parameter counts of a model.
      convert MODEL     GGUF or HuggingFace model -> HuggingFace folder (safetensors, f32/f16/bf16).
      tokenize MODEL    Token count (and ids) of a text file with the model's tokenizer.
      eval MODEL        Perplexity (Protocol S or P of BENCHMARK.md), tokens/s, peak memory.
      generate MODEL    Greedy text continuation of --prompt, with a KV cache.
      calibrate MODEL   Per-layer Float64 Grams of the linear inputs on calibration text, layer by layer.
      compress MODEL    Compress a model into a Sheaf checkpoint with a method of \(methodNames).
      export DIR        A compressed checkpoint -> a dense HuggingFace folder.
      sweep MODEL       Methods × budgets (× allocations) on one calibration: results and a frontier SVG.
      help [command]    Show help for a command.

    BACKENDS: --backend auto|cpu|opencl (or SHEAF_BACKEND). auto = an OpenCL GPU if present,
      else cpu; an explicit opencl never falls back. SHEAF_OPENCL_DEVICE picks the device
      (index or name substring), SHEAF_THREADS the OpenBLAS threads (default: all cores),
      SHEAF_CPU_VECTOR=0 keeps the cpu backend on its portable loops instead of AVX2/NEON ones,
      SHEAF_KERNEL_DIR loads kernels/*.cl from disk instead of the embedded copies, and
      SHEAF_OPENCL_TUNABLES=TS,TK,LOCAL (e.g. 64,128,0) overrides the kernel tunables.

    Run 'sheaf help <command>' for a command's options.
    """

let doctorHelp = """
    USAGE: sheaf doctor [--json]

    Lists the CPU (model, vector extensions: AVX2, AVX-512 F/BW/VL/DQ/BF16, NEON, ...), OpenCL
    platforms and devices (type, compute units, memory, fp64), the OpenBLAS build, the kernel
    set it runs (its own choice, or OPENBLAS_CORETYPE's) and its thread count, and which backend
    'auto' picks; then runs one parity case of every op on cpu and opencl against the plain-Swift
    Float64 reference backend, each under a tolerance derived from the op's rounding count.
    Exit code 1 if any check fails or OpenCL cannot start.

    OPTIONS:
      --json     Print the report as one JSON object.
    """

let benchHelp = """
    USAGE: sheaf bench kernels [--backend auto|cpu|opencl|all] [--op gram,gemm,kmeans] [--quick] [--json]

    Measures each op (Gram accumulation of 8192-row chunks for d = 576, 1536, 4096; GEMM
    2048³; K-means distances, assignment and sums for 4096 points of d = 4096 against 256
    centroids) on each backend, next to OpenBLAS ssyrk/sgemm on the same data and the CPU's
    float32 peak. Best of repeated runs after a warm-up. Progress goes to stderr.

    OPTIONS:
      --backend B   Which backends to measure (default: all = cpu and opencl).
      --op LIST     Only these op families (comma-separated; default: all).
      --quick       Small sizes, for a smoke run.
      --json        Print the results as one JSON object.
    """

enum Commands {
    static func doctor(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: [], flags: ["json", "help"])
        if a.flag("help") { print(doctorHelp); return 0 }
        guard a.positionals.isEmpty else { throw UsageError(description: "doctor takes no arguments") }
        let report = Doctor.run(options: try Env.backendOptions(), openBLASCoreType: Env.get("OPENBLAS_CORETYPE"))
        if a.flag("json") {
            try printJSON(DoctorJSON(report))
            return report.passed ? 0 : 1
        }
        print("CPU: \(report.cpu.model) (\(report.cpu.architecture); \(report.cpu.extensions.isEmpty ? "no vector extensions listed" : report.cpu.extensions.joined(separator: " ")))")
        print("OpenCL devices:")
        if report.openCLDevices.isEmpty { print("  none") }
        for d in report.openCLDevices {
            print("  [\(d.index)] \(d.name) — \(d.type), \(d.platform), \(d.computeUnits) compute units, \(d.clockMHz) MHz, "
                + "\(fixed(Double(d.globalMemoryBytes) / 1_073_741_824)) GiB global, \(d.localMemoryBytes / 1024) KiB local, "
                + "fp64 \(d.fp64 ? "yes" : "no"), driver \(d.driverVersion)")
        }
        if let t = report.openCLTunables {
            print("OpenCL kernel tunables: TS=\(t.tileSize) TK=\(t.reductionStep) USE_LOCAL=\(t.useLocalMemory ? 1 : 0)")
        }
        if let e = report.openCLError { print("OpenCL: FAIL \(e)") }
        let chosen = report.openBLAS.coreTypeOverride.map { "set by OPENBLAS_CORETYPE=\($0)" } ?? "OpenBLAS's own choice"
        print("OpenBLAS: core \(report.openBLAS.core) (\(chosen)), \(report.openBLAS.threads) threads (\(report.openBLAS.config))")
        if let better = report.openBLASSuggestion {
            print("  note: this CPU has wider vector instructions than OpenBLAS's \(report.openBLAS.core) kernels use; "
                + "OPENBLAS_CORETYPE=\(better) runs its \(better) kernels (check them with 'OPENBLAS_CORETYPE=\(better) sheaf doctor')")
        }
        print("cpu row loops: \(report.cpuLoops)")
        print("auto backend: \(report.autoBackend)")
        print("Parity against the Float64 reference (normalised MSE, or the factor's residual for cholesky):")
        for r in report.parity {
            print("  \(r.passed ? "PASS" : "FAIL") \(pad(r.backend, 7)) \(pad(r.op, 17)) \(pad(r.shape, 26)) "
                + "error \(sci(r.error)) (tolerance \(sci(r.tolerance)))" + (r.passed ? "" : ": \(r.failure)"))
        }
        let failed = report.parity.filter { !$0.passed }.count
        print(report.passed
            ? "All \(report.parity.count) checks passed."
            : "\(failed) of \(report.parity.count) checks failed" + (report.openCLError != nil ? "; OpenCL unavailable" : "") + ".")
        return report.passed ? 0 : 1
    }

    /// The doctor report with `passed` spelled out for JSON readers.
    struct DoctorJSON: Encodable {
        let report: DoctorReport
        init(_ r: DoctorReport) { report = r }
        enum Keys: String, CodingKey { case passed, report }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(report.passed, forKey: .passed)
            try c.encode(report, forKey: .report)
        }
    }

    static func bench(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: ["backend", "op"], flags: ["json", "quick", "help"])
        if a.flag("help") { print(benchHelp); return 0 }
        guard a.positionals == ["kernels"] else {
            throw UsageError(description: "expected 'sheaf bench kernels' (the only benchmark so far)")
        }
        let options = try Env.backendOptions()
        // A benchmark compares backends: SHEAF_BACKEND does not narrow it, only --backend does.
        let which = a.value("backend") ?? "all"
        var backends: [any Backend] = []
        switch which {
        case "all":
            backends.append(CPUBackend(threads: options.threads, vectorKernels: options.cpuVectorKernels))
            do { backends.append(try BackendSelection.make(.opencl, options: options)) }
            catch { note("warning: OpenCL skipped: \(error)") }
        case "auto", "cpu", "opencl":
            backends.append(try BackendSelection.make(try Env.backendChoice(which), options: options))
        default:
            throw UsageError(description: "unknown backend '\(which)' (expected all, auto, cpu or opencl)")
        }
        var sizes: KernelBench.Sizes = a.flag("quick") ? .quick : .init()
        if let ops = a.value("op") {
            sizes.families = Set(ops.split(separator: ",").map(String.init))
            guard sizes.families.isSubset(of: KernelBench.families), !sizes.families.isEmpty else {
                throw UsageError(description: "--op expects a comma-separated subset of gram, gemm, kmeans; got '\(ops)'")
            }
        }
        let cpu = CPUBackend(threads: options.threads)
        let peak = MachinePeak.detect(cores: ProcessInfo.processInfo.activeProcessorCount)
        let results = try KernelBench.run(
            backends: backends, sizes: sizes, progress: { note("bench: " + $0) })
        let device = backends.compactMap { ($0 as? OpenCLBackend)?.deviceName }.first
        let report = BenchReport(machine: peak, threads: cpu.threads, openCLDevice: device, results: results)
        if a.flag("json") {
            try printJSON(report)
            return 0
        }
        print("CPU peak: \(fixed(peak.gflops)) GFLOP/s float32 (\(peak.cores) cores × \(fixed(peak.clockGHz, 2)) GHz × "
            + "\(peak.flopsPerCycle) flops/cycle, \(peak.isa)); OpenBLAS threads: \(cpu.threads)")
        if let device { print("OpenCL device: \(device)") }
        print(pad("op", 17) + pad("backend", 16) + pad("shape", 22) + pad("time (s)", 11) + pad("GFLOP/s", 10)
            + pad("GB/s", 8) + pad("vs OpenBLAS", 12) + "% of peak")
        for r in results {
            print(pad(r.op, 17) + pad(r.backend, 16) + pad(r.shape, 22) + pad(String(format: "%.4f", r.seconds), 11)
                + pad(fixed(r.gflops), 10) + pad(r.gbPerSecond.map { fixed($0) } ?? "", 8)
                + pad(r.ratioToOpenBLAS.map { fixed($0 * 100) + "%" } ?? "", 12) + fixed(r.gflops / peak.gflops * 100) + "%")
        }
        return 0
    }

}
