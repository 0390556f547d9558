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
            cpu: CPUFeatures.description, openCLDevices: devices, openCLError: openCLError, openCLTunables: tunables,
            openBLAS: .init(
                core: CPUBackend.openBLASCore, threads: cpu.threads, config: CPUBackend.openBLASConfig,
                coreTypeOverride: openBLASCoreType),
            cpuLoops: cpu.vectorKernels ? "\(CPUFeatures.vectorISA) vector" : "portable",
            autoBackend: BackendSelection.resolveAuto(options).rawValue, parity: parity)
    }
}
