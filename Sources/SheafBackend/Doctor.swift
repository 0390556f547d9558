import COpenBLAS
import Foundation
import SheafCore

/// What `sheaf doctor` reports: the devices, OpenBLAS, the backend `auto` picks, and a quick
/// parity check of every op on every available backend against the reference.
public struct DoctorReport: Sendable, Codable {
    public struct OpenBLASInfo: Sendable, Codable {
        /// The kernel set OpenBLAS runs (its DYNAMIC_ARCH pick, or OPENBLAS_CORETYPE's).
        public var core: String
        public var threads: Int
        /// The build: version, DYNAMIC_ARCH, the kernel set it was compiled for, MAX_THREADS.
        public var config: String
        /// OPENBLAS_CORETYPE when set: the kernel set is then the user's choice, not OpenBLAS's.
        public var coreTypeOverride: String?
    }

    public var cpu: CPUFeatures.Description
    /// When OpenBLAS runs a kernel set for an older instruction set than this CPU has (it can
    /// misread a CPU it does not know, such as a VM's generic model name): the OPENBLAS_CORETYPE
    /// that would use the CPU's vector width.
    public var openBLASSuggestion: String?

    public var openCLDevices: [OpenCLDeviceInfo]
    /// Why OpenCL could not be listed or started, when it could not.
    public var openCLError: String?
    public var openCLTunables: KernelTunables?
    public var openBLAS: OpenBLASInfo
    /// Which row loops `cpu` runs: "AVX2 vector" / "NEON vector", or "portable" (no AVX2 + FMA on
    /// this CPU, or SHEAF_CPU_VECTOR=0).
    public var cpuLoops: String
    public var autoBackend: String
    public var parity: [ParityResult]
    public var passed: Bool { openCLError == nil && parity.allSatisfy(\.passed) }
}

public enum Doctor {
    /// Runs the checks. OpenCL problems are reported in the report (and fail it), not thrown.
    /// `openBLASCoreType` is OPENBLAS_CORETYPE as the CLI read it (environment variables are the
    /// CLI's to read).
    public static func run(options: BackendOptions, openBLASCoreType: String? = nil) -> DoctorReport {
        let cpu = CPUBackend(threads: options.threads, vectorKernels: options.cpuVectorKernels)
        let reference = ReferenceBackend()
        var devices: [OpenCLDeviceInfo] = []
        var openCLError: String?
        var tunables: KernelTunables?
        var parity = Parity.quickSuite(cpu, reference)
        do throws(SheafError) {
            devices = try OpenCLDevices.list()
            let opencl = try OpenCLBackend(
                device: options.openCLDevice, kernelDirectory: options.kernelDirectory, tunables: options.tunables)
            tunables = opencl.tunables
            try opencl.buildAllKernels()
            parity += Parity.quickSuite(opencl, reference)
        } catch {
            openCLError = error.description
        }
        return DoctorReport(
            cpu: CPUFeatures.description,
            openBLASSuggestion: openBLASCoreType == nil ? suggestedCoreType(running: CPUBackend.openBLASCore, cpu: CPUFeatures.description) : nil, openCLDevices: devices, openCLError: openCLError, openCLTunables: tunables,
            openBLAS: .init(
                core: CPUBackend.openBLASCore, threads: cpu.threads, config: CPUBackend.openBLASConfig,
                coreTypeOverride: openBLASCoreType),
            cpuLoops: cpu.vectorKernels ? "\(CPUFeatures.vectorISA) vector" : "portable",
            autoBackend: BackendSelection.resolveAuto(options).rawValue, parity: parity)
    }

    /// OpenBLAS's x86-64 kernel sets by the widest vector instructions they use: 0 SSE, 1 AVX,
    /// 2 AVX2 + FMA, 3 AVX-512.
    static let coreLevels: [String: Int] = [
        "Prescott": 0, "Core2": 0, "Penryn": 0, "Dunnington": 0, "Nehalem": 0, "Atom": 0, "Opteron": 0, "Barcelona": 0,
        "Bobcat": 0, "Sandybridge": 1, "Bulldozer": 1, "Piledriver": 1, "Steamroller": 1, "Excavator": 1, "Haswell": 2,
        "Zen": 2, "SkylakeX": 3, "Cooperlake": 3, "SapphireRapids": 3,
    ]

    /// The OPENBLAS_CORETYPE for this CPU's widest vector ISA when `core` uses a narrower one, else nil.
    public static func suggestedCoreType(running core: String, cpu: CPUFeatures.Description) -> String? {
        guard cpu.architecture == "x86_64", let running = coreLevels.first(where: { $0.key.lowercased() == core.lowercased() })?.value
        else { return nil }
        let has = Set(cpu.extensions)
        let level = has.isSuperset(of: ["AVX-512F", "AVX-512BW", "AVX-512VL", "AVX-512DQ"]) ? 3
            : has.isSuperset(of: ["AVX2", "FMA"]) ? 2 : has.contains("AVX") ? 1 : 0
        guard level > running else { return nil }
        return ["Prescott", "Sandybridge", "Haswell", "SkylakeX"][level]
    }
}
