import SheafBackend
import SheafCore
import Testing

/// Every suite that touches a backend nests in here: `.serialized` runs them one at a time,
/// because OpenBLAS and PoCL threads oversubscribe the cores when tests run in parallel.
@Suite(.serialized) enum BackendSuites {}

/// The backends under test. The OpenCL device is PoCL in CI; its GPU kernel variant (local-
/// memory tiles) is built on it too, so both code paths of kernels/common.cl are checked.
enum Backends {
    static let reference = ReferenceBackend()
    static let cpu = CPUBackend()
    /// The cpu backend on its portable scalar loops (what a CPU without AVX2 + FMA runs).
    static let cpuPortable = CPUBackend(vectorKernels: false)

    static func opencl() throws -> OpenCLBackend { try OpenCLBackend() }

    static func openclGPUVariant() throws -> OpenCLBackend {
        try OpenCLBackend(tunables: KernelTunables(tileSize: 64, reductionStep: 16, useLocalMemory: true))
    }

    /// A small-tile variant: 16 x 16 tiles, 8 reduction steps, so modest sizes cross many tiles.
    static func openclSmallTiles() throws -> OpenCLBackend {
        try OpenCLBackend(tunables: KernelTunables(tileSize: 16, reductionStep: 8, useLocalMemory: false))
    }

    enum Name: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case cpu, cpuPortable, opencl, openclGPU, openclSmall
        var testDescription: String { rawValue }
    }

    static func make(_ name: Name) throws -> any Backend {
        switch name {
        case .cpu: cpu
        case .cpuPortable: cpuPortable
        case .opencl: try opencl()
        case .openclGPU: try openclGPUVariant()
        case .openclSmall: try openclSmallTiles()
        }
    }
}

func expectPass(_ r: ParityResult, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.passed, "\(r.backend) \(r.op) \(r.shape): \(r.failure) (error \(r.error), tolerance \(r.tolerance))",
            sourceLocation: sourceLocation)
}
