import Foundation
import SheafBackend

/// The environment variables Sheaf reads. Only the CLI reads them; the library takes options.
enum Env {
    static func get(_ name: String) -> String? {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else { return nil }
        return v
    }

    /// OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when it loads, and by default its idle
    /// worker threads spin on `sched_yield` for 2²⁸ rounds between calls, competing with Sheaf's
    /// own workers (attention, element-wise loops, Gram updates) for the cores: attention took
    /// 1.0–1.4 s per 2048-token window from run to run, a steady 0.99 s with the variable at 4
    /// (2⁴ rounds, then sleep). Unless the user set it, the CLI re-executes itself once with it
    /// set; if that fails it runs on as it is.
    static func quietOpenBLASThreads() {
        guard getenv("OPENBLAS_THREAD_TIMEOUT") == nil else { return }
        setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
    }

    /// Backend options from SHEAF_THREADS, SHEAF_CPU_VECTOR, SHEAF_OPENCL_DEVICE, SHEAF_KERNEL_DIR
    /// and SHEAF_OPENCL_TUNABLES.
    static func backendOptions() throws(UsageError) -> BackendOptions {
        var threads: Int?
        if let t = get("SHEAF_THREADS") {
            guard let n = Int(t), n > 0 else { throw UsageError(description: "SHEAF_THREADS must be a positive integer, got '\(t)'") }
            threads = n
        }
        let vector = get("SHEAF_CPU_VECTOR") ?? "1"
        guard vector == "0" || vector == "1" else { throw UsageError(description: "SHEAF_CPU_VECTOR must be 0 or 1, got '\(vector)'") }
        var tunables: KernelTunables?
        if let t = get("SHEAF_OPENCL_TUNABLES") {
            let parts = t.split(separator: ",").compactMap { Int($0) }
            guard parts.count == 3, parts[0] > 0, parts[0] % 8 == 0, parts[1] > 0, parts[2] == 0 || parts[2] == 1 else {
                throw UsageError(description: "SHEAF_OPENCL_TUNABLES must be TS,TK,LOCAL (TS a multiple of 8, LOCAL 0 or 1), got '\(t)'")
            }
            tunables = KernelTunables(tileSize: parts[0], reductionStep: parts[1], useLocalMemory: parts[2] == 1)
        }
        return BackendOptions(
            threads: threads, cpuVectorKernels: vector == "1", openCLDevice: get("SHEAF_OPENCL_DEVICE"), kernelDirectory: get("SHEAF_KERNEL_DIR"),
            tunables: tunables)
    }

    /// `--backend` if given, else SHEAF_BACKEND, else auto.
    static func backendChoice(_ flag: String?) throws(UsageError) -> BackendChoice {
        let raw = flag ?? get("SHEAF_BACKEND") ?? "auto"
        guard let choice = BackendChoice(rawValue: raw), choice != .reference else {
            throw UsageError(description: "unknown backend '\(raw)' (expected auto, cpu or opencl)")
        }
        return choice
    }
}
