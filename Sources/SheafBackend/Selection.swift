import SheafCore

/// What the user asked for with `--backend` / `SHEAF_BACKEND`.
public enum BackendChoice: String, Sendable, CaseIterable {
    case auto, cpu, opencl, reference
}

/// Settings the CLI reads from flags and the environment and passes in.
public struct BackendOptions: Sendable {
    /// OpenBLAS threads (`SHEAF_THREADS`); nil = all cores.
    public var threads: Int?
    /// `SHEAF_CPU_VECTOR=0`: keep the CPU backend on its portable loops even where the CPU runs
    /// the vector ones.
    public var cpuVectorKernels: Bool
    /// `SHEAF_OPENCL_DEVICE`: an index or a name substring.
    public var openCLDevice: String?
    /// `SHEAF_KERNEL_DIR`: load kernels/*.cl from disk.
    public var kernelDirectory: String?
    /// `SHEAF_OPENCL_TUNABLES`: override the per-device kernel tunables (kernel tuning).
    public var tunables: KernelTunables?

    public init(
        threads: Int? = nil, cpuVectorKernels: Bool = true, openCLDevice: String? = nil, kernelDirectory: String? = nil,
        tunables: KernelTunables? = nil
    ) {
        self.threads = threads
        self.cpuVectorKernels = cpuVectorKernels
        self.openCLDevice = openCLDevice
        self.kernelDirectory = kernelDirectory
        self.tunables = tunables
    }
}

public enum BackendSelection {
    /// Which backend `auto` resolves to: `opencl` when an OpenCL GPU exists (or the device
    /// the options name is a GPU), else `cpu`.
    public static func resolveAuto(_ options: BackendOptions) -> BackendKind {
        guard let devices = try? OpenCLDevices.list() else { return .cpu }
        if let sel = options.openCLDevice, !sel.isEmpty {
            let match = Int(sel).flatMap { i in devices.first { $0.index == i } }
                ?? devices.first { $0.name.lowercased().contains(sel.lowercased()) }
            return match?.isGPU == true && match?.fp64 == true ? .opencl : .cpu
        }
        return devices.contains { $0.isGPU && $0.fp64 } ? .opencl : .cpu
    }

    /// Makes the backend. An explicit `opencl` that cannot start throws; it never falls back.
    public static func make(_ choice: BackendChoice, options: BackendOptions = .init()) throws(SheafError) -> any Backend {
        switch choice {
        case .cpu: return CPUBackend(threads: options.threads, vectorKernels: options.cpuVectorKernels)
        case .reference: return ReferenceBackend()
        case .opencl:
            return try OpenCLBackend(
                device: options.openCLDevice, kernelDirectory: options.kernelDirectory, tunables: options.tunables)
        case .auto:
            return try make(resolveAuto(options) == .opencl ? .opencl : .cpu, options: options)
        }
    }
}
