import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel
import Testing

/// Every suite that touches a backend nests in here: `.serialized` runs them one at a time,
/// because OpenBLAS and PoCL threads oversubscribe the cores when tests run in parallel.
@Suite(.serialized) public enum BackendSuites {}

/// The backends under test. The OpenCL device is PoCL in CI; its GPU kernel variant (local-
/// memory tiles) is built on it too, so both code paths of kernels/common.cl are checked.
public enum Backends {
    public static let reference = ReferenceBackend()
    public static let cpu = CPUBackend()
    /// The cpu backend on its portable scalar loops (what a CPU without AVX2 + FMA runs).
    public static let cpuPortable = CPUBackend(vectorKernels: false)

    public static func opencl() throws -> OpenCLBackend { try OpenCLBackend() }

    public static func openclGPUVariant() throws -> OpenCLBackend {
        try OpenCLBackend(tunables: KernelTunables(tileSize: 64, reductionStep: 16, useLocalMemory: true))
    }

    /// A small-tile variant: 16 x 16 tiles, 8 reduction steps, so modest sizes cross many tiles.
    public static func openclSmallTiles() throws -> OpenCLBackend {
        try OpenCLBackend(tunables: KernelTunables(tileSize: 16, reductionStep: 8, useLocalMemory: false))
    }

    public enum Name: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case cpu, cpuPortable, opencl, openclGPU, openclSmall
        public var testDescription: String { rawValue }
    }

    public static func make(_ name: Name) throws -> any Backend {
        switch name {
        case .cpu: cpu
        case .cpuPortable: cpuPortable
        case .opencl: try opencl()
        case .openclGPU: try openclGPUVariant()
        case .openclSmall: try openclSmallTiles()
        }
    }
}

public func expectPass(_ r: ParityResult, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.passed, "\(r.backend) \(r.op) \(r.shape): \(r.failure) (error \(r.error), tolerance \(r.tolerance))",
            sourceLocation: sourceLocation)
}

/// The roundings on the longest path from the embedding to a logit, step by step, from which
/// the forward-pass tests derive their bounds (`Roundoff.chainNMSE`, `statisticalRelative`).
public enum ForwardPath {
    /// Term counts per step: per layer the input norm (d + 8), the q/k/v product (d), scores
    /// (head_dim + 2), softmax (keys + 12), weights·v (keys), o (heads·head_dim), the residual
    /// add, the MLP norm, gate/up (d), SiLU·up (7 ulp ≈ 14 roundings), down (FFN), the residual;
    /// then the final norm and the output head (d). `rank` adds a low-rank product after each
    /// linear (factored layers compute x·B then ·C).
    public static func terms(_ c: ModelConfig, keys: Int, rank: Int? = nil) -> [Int] {
        let d = c.hiddenSize, extra = rank.map { [$0] } ?? []
        let block = [d + 8, d] + extra + [c.headDim + 2, keys + 12, keys, c.headCount * c.headDim] + extra
            + [1, d + 8, d] + extra + [14, c.intermediateSize] + extra + [1]
        return Array((0..<c.layerCount).map { _ in block }.joined()) + [d + 8, d]
    }

    /// Worst case, first order: the bound on one backend's logits against the exact ones.
    public static func logitsNMSE(_ c: ModelConfig, keys: Int, rank: Int? = nil) -> Double {
        Roundoff.chainNMSE(terms(c, keys: keys, rank: rank))
    }

    /// Two computations of the same logits (two backends, two factorings): 4× one's bound.
    public static func logitsNMSEBetween(_ c: ModelConfig, keys: Int, rank: Int? = nil) -> Double {
        4 * logitsNMSE(c, keys: keys, rank: rank)
    }

    /// Relative perplexity difference allowed when every logit errs by at most
    /// √(nMSE·Σx²) (the largest element error is below the root of the summed squares): the
    /// mean NLL moves by at most twice that, and perplexity is its exponential.
    public static func perplexityRelative(logitsNMSE: Double, logits: [Float]) -> Double {
        let sumSquares = logits.reduce(0.0) { $0 + Double($1) * Double($1) }
        return Foundation.exp(2 * (logitsNMSE * sumSquares).squareRoot()) - 1
    }

    /// The 30-layer reference model, where the worst case is no use: the typical relative logit
    /// error of two float32 computations (√2 · u·√Σnᵢ), times the RMS logit, is each NLL's
    /// error (twice, for the log-sum-exp and the target); over N predictions with independent
    /// errors the mean moves by that over √N. 10 standard deviations of margin.
    public static func realPerplexityRelative(_ c: ModelConfig, keys: Int, rank: Int? = nil, predictions: Int, logitRMS: Double) -> Double {
        let relative = 2.squareRoot() * Roundoff.statisticalRelative(terms(c, keys: keys, rank: rank))
        return 10 * 2 * relative * logitRMS / Double(predictions).squareRoot()
    }
}

extension RealFixtures {
    /// The RMS of the reference model's logits over its first 64 tokens of WikiText-2: the scale
    /// of an NLL's rounding error.
    public static func logitRMS(_ files: ModelFiles) throws -> Double {
        let text = try String(contentsOfFile: wikiPath, encoding: .utf8)
        let tokens = Array(try files.tokenizer().encode(String(text.prefix(2000))).prefix(64))
        let logits = try LlamaModel(files: files, backend: Backends.cpu).logits(tokens).values
        return (logits.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(max(logits.count, 1))).squareRoot()
    }
}

/// A tiny random Llama written as a HuggingFace folder: hidden 64, 4 query heads and 2
/// key-value heads of 16, MLP 96, 2 layers (or `layers`), vocabulary 101. `tied`: no
/// lm_head.weight, the head is the embedding (as in SmolLM2).
public enum TinyModel {
    public static func write(seed: UInt64 = 7, attentionBias: Bool = false, nanIn: String? = nil, layers: Int = 2, tied: Bool = false) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-tiny-\(getpid())-\(seed)-\(nanIn ?? "")-\(layers)\(tied ? "-tied" : "")").path
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let config = try ModelConfig(
            architecture: attentionBias ? "qwen2" : "llama", hiddenSize: 64, intermediateSize: 96, layerCount: layers, headCount: 4,
            kvHeadCount: 2, headDim: 16, vocabularySize: 101, ropeTheta: 10_000, rmsNormEps: 1e-5, maxPositions: 512,
            tiedEmbeddings: tied, attentionBias: attentionBias)
        try config.configJSON().write(to: URL(fileURLWithPath: dir + "/config.json"))
        var rng = SplitMix64(seed: seed)
        var tensors: [TensorToWrite] = []
        func add(_ name: String, _ shape: [Int], scale: Float, offset: Float = 0) throws {
            var values = (0..<shape.reduce(1, *)).map { _ in rng.nextSignedUnitFloat() * scale + offset }
            if name == nanIn { values[3] = .nan }
            tensors.append(try TensorToWrite(name: name, shape: shape, values: values))
        }
        try add("model.embed_tokens.weight", [101, 64], scale: 1)
        if !tied { try add("lm_head.weight", [101, 64], scale: 0.2) }
        try add("model.norm.weight", [64], scale: 0.1, offset: 1)
        for i in 0..<layers {
            let p = "model.layers.\(i)."
            try add(p + "input_layernorm.weight", [64], scale: 0.1, offset: 1)
            try add(p + "post_attention_layernorm.weight", [64], scale: 0.1, offset: 1)
            for (name, out, inp) in [("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("self_attn.v_proj", 32, 64),
                                     ("self_attn.o_proj", 64, 64), ("mlp.gate_proj", 96, 64), ("mlp.up_proj", 96, 64),
                                     ("mlp.down_proj", 64, 96)] {
                try add(p + name + ".weight", [out, inp], scale: 0.25)
                if attentionBias && ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].contains(name) {
                    try add(p + name + ".bias", [out], scale: 0.1)
                }
            }
        }
        try SafetensorsWriter.writeModel(tensors, to: dir)
        return dir
    }
}

/// The reference model (scripts/fixtures) and WikiText-2 test (../shared/data or SHEAF_DATA);
/// missing files fail with directions, never skip.
public enum RealFixtures {
    public static var modelPath: String {
        let cache = ProcessInfo.processInfo.environment["SHEAF_CACHE"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() + "/.cache/sheaf")
        return cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    }

    public static var wikiPath: String {
        let data = ProcessInfo.processInfo.environment["SHEAF_DATA"].flatMap { $0.isEmpty ? nil : $0 }
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../shared/data").path
        return data + "/wikitext-2-raw/wiki.test.raw"
    }

    public static func require(_ path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            Issue.record("missing \(path): run scripts/fixtures (and keep ../shared/data beside the clone or set SHEAF_DATA)")
            throw SheafError.io(path: path, detail: "missing")
        }
    }
}

/// The `sheaf` binary as a user runs it: exit code, stdout, stderr.
public struct SheafCLI {
    public struct Run {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    public init() {}

    /// The `sheaf` executable next to the test bundle (same build configuration).
    public static var binary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("sheaf")
    }

    public func sheaf(_ args: [String], env: [String: String] = [:], in directory: String? = nil) throws -> Run {
        var binary = Self.binary
        if !FileManager.default.fileExists(atPath: binary.path) {
            // `swift test` may launch the bundle through a helper: fall back to the package's build folder.
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..")
            binary = ["release", "debug"].map { root.appendingPathComponent(".build/\($0)/sheaf") }
                .first { FileManager.default.fileExists(atPath: $0.path) } ?? binary
        }
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
}
