// swift-tools-version:6.1
// Sheaf: compress large language models by sharing weights.
// No Swift package dependencies: the toolchain plus system C libraries (OpenCL, OpenBLAS).
import PackageDescription

// The CPU backend's vector loops (SheafCPUKernels) are compiled for AVX2 + FMA (+ F16C, which every
// AVX2 CPU has, for 16-bit weights) on x86-64: without
// them Swift's SIMD8 arithmetic is SSE with a libm call per lane for each fused multiply-add. The
// backend runs them only after checking the CPU (CPUFeatures), so the binary still runs on older
// x86-64 CPUs, on the portable loops. arm64 has NEON in every CPU and needs no flags.
//
// SHEAF_CPU_ISA=avx512 at build time compiles them for AVX-512 (F, VL, BW, DQ) instead, for
// measuring against AVX2 (BENCHMARKS.md); that binary's vector loops run only on such CPUs.
#if arch(x86_64)
import Foundation
let avx512 = ProcessInfo.processInfo.environment["SHEAF_CPU_ISA"] == "avx512"
let vectorFlags: [SwiftSetting] = avx512
    ? [.unsafeFlags(["-Xcc", "-mavx2", "-Xcc", "-mfma", "-Xcc", "-mf16c", "-Xcc", "-mavx512f", "-Xcc", "-mavx512vl",
                     "-Xcc", "-mavx512bw", "-Xcc", "-mavx512dq"]), .define("SHEAF_AVX512")]
    : [.unsafeFlags(["-Xcc", "-mavx2", "-Xcc", "-mfma", "-Xcc", "-mf16c"])]
#else
let vectorFlags: [SwiftSetting] = []
#endif

let package = Package(
    name: "Sheaf",
    products: [
        .library(name: "SheafKit", targets: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel", "SheafEval", "SheafCompress"]),
        .executable(name: "sheaf", targets: ["sheaf"]),
    ],
    targets: [
        .systemLibrary(name: "COpenCL", path: "Sources/COpenCL"),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS"),
        // Embeds kernels/*.cl into the binary with C23 #embed.
        .target(
            name: "CKernels",
            path: "Sources/CKernels",
            cSettings: [.unsafeFlags(["-std=c23"])]
        ),
        .target(name: "SheafCore"),
        // Float32 row loops on 8-lane vectors (exp, softmax, SiLU, log-sum-exp) for CPUBackend.
        .target(name: "SheafCPUKernels", swiftSettings: vectorFlags),
        .target(name: "SheafBackend", dependencies: ["SheafCore", "SheafCPUKernels", "COpenCL", "COpenBLAS", "CKernels"]),
        // safetensors and GGUF files, model configs, tokenizers.
        .target(name: "SheafIO", dependencies: ["SheafCore"]),
        // The Llama-family forward pass over linear-layer variants, on any backend.
        .target(name: "SheafModel", dependencies: ["SheafCore", "SheafBackend", "SheafIO"]),
        // Calibration-driven compression: whitened SVD, Basis Sharing; the compressed checkpoint.
        .target(name: "SheafCompress", dependencies: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel"]),
        // Perplexity under the protocols of BENCHMARK.md.
        .target(name: "SheafEval", dependencies: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel"]),
        .executableTarget(
            name: "sheaf", dependencies: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel", "SheafEval", "SheafCompress"]),
        // What the test targets share: the backends under test and the serialized suite that
        // holds every backend-using suite, the tiny random model, the real-model fixtures, the
        // rounding bounds of the forward pass, and the `sheaf` binary runner.
        .target(
            name: "SheafTestSupport", dependencies: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel"],
            path: "Tests/SheafTestSupport"),
        // Backend ops against the reference (parity), the vector loops, bad input to the backends.
        .testTarget(
            name: "SheafBackendTests", dependencies: ["SheafCore", "SheafCPUKernels", "SheafBackend", "SheafTestSupport"]),
        // The forward pass, calibration hooks and the real model's perplexity.
        .testTarget(
            name: "SheafModelTests",
            dependencies: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel", "SheafEval", "SheafTestSupport"]),
        // Compression methods, the checkpoint and its export. Depends on the executable for the
        // end-to-end runs of `sheaf compress`.
        .testTarget(
            name: "SheafCompressTests",
            dependencies: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel", "SheafEval", "SheafCompress", "SheafTestSupport", "sheaf"]),
        // The `sheaf` binary as a user runs it: exit codes, one-line errors, JSON that parses.
        .testTarget(name: "SheafCLITests", dependencies: ["SheafBackend", "SheafTestSupport", "sheaf"]),
        .testTarget(name: "SheafIOTests", dependencies: ["SheafCore", "SheafIO"]),
    ]
)
