// swift-tools-version:6.1
// Sheaf: compress large language models by sharing weights.
// No Swift package dependencies: the toolchain plus system C libraries (OpenCL, OpenBLAS).
import PackageDescription

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
        .target(name: "SheafBackend", dependencies: ["SheafCore", "COpenCL", "COpenBLAS", "CKernels"]),
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
        // Depends on the executable so `swift test` builds the `sheaf` binary the CLI tests run.
        // Also the forward-pass tests: they use backends, so they nest in the same serialized suite.
        .testTarget(
            name: "SheafBackendTests",
            dependencies: ["SheafCore", "SheafBackend", "SheafIO", "SheafModel", "SheafEval", "SheafCompress", "sheaf"]),
        .testTarget(name: "SheafIOTests", dependencies: ["SheafCore", "SheafIO"]),
    ]
)
