import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel
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

/// The roundings on the longest path from the embedding to a logit, step by step, from which
/// the forward-pass tests derive their bounds (`Roundoff.chainNMSE`, `statisticalRelative`).
enum ForwardPath {
    /// Term counts per step: per layer the input norm (d + 8), the q/k/v product (d), scores
    /// (head_dim + 2), softmax (keys + 12), weights·v (keys), o (heads·head_dim), the residual
    /// add, the MLP norm, gate/up (d), SiLU·up (7 ulp ≈ 14 roundings), down (FFN), the residual;
    /// then the final norm and the output head (d). `rank` adds a low-rank product after each
    /// linear (factored layers compute x·B then ·C).
    static func terms(_ c: ModelConfig, keys: Int, rank: Int? = nil) -> [Int] {
        let d = c.hiddenSize, extra = rank.map { [$0] } ?? []
        let block = [d + 8, d] + extra + [c.headDim + 2, keys + 12, keys, c.headCount * c.headDim] + extra
            + [1, d + 8, d] + extra + [14, c.intermediateSize] + extra + [1]
        return Array((0..<c.layerCount).map { _ in block }.joined()) + [d + 8, d]
    }

    /// Worst case, first order: the bound on one backend's logits against the exact ones.
    static func logitsNMSE(_ c: ModelConfig, keys: Int, rank: Int? = nil) -> Double {
        Roundoff.chainNMSE(terms(c, keys: keys, rank: rank))
    }

    /// Two computations of the same logits (two backends, two factorings): 4× one's bound.
    static func logitsNMSEBetween(_ c: ModelConfig, keys: Int, rank: Int? = nil) -> Double {
        4 * logitsNMSE(c, keys: keys, rank: rank)
    }

    /// Relative perplexity difference allowed when every logit errs by at most
    /// √(nMSE·Σx²) (the largest element error is below the root of the summed squares): the
    /// mean NLL moves by at most twice that, and perplexity is its exponential.
    static func perplexityRelative(logitsNMSE: Double, logits: [Float]) -> Double {
        let sumSquares = logits.reduce(0.0) { $0 + Double($1) * Double($1) }
        return Foundation.exp(2 * (logitsNMSE * sumSquares).squareRoot()) - 1
    }

    /// The 30-layer reference model, where the worst case is no use: the typical relative logit
    /// error of two float32 computations (√2 · u·√Σnᵢ), times the RMS logit, is each NLL's
    /// error (twice, for the log-sum-exp and the target); over N predictions with independent
    /// errors the mean moves by that over √N. 10 standard deviations of margin.
    static func realPerplexityRelative(_ c: ModelConfig, keys: Int, rank: Int? = nil, predictions: Int, logitRMS: Double) -> Double {
        let relative = 2.squareRoot() * Roundoff.statisticalRelative(terms(c, keys: keys, rank: rank))
        return 10 * 2 * relative * logitRMS / Double(predictions).squareRoot()
    }
}

extension RealFixtures {
    /// The RMS of the reference model's logits over its first 64 tokens of WikiText-2: the scale
    /// of an NLL's rounding error.
    static func logitRMS(_ files: ModelFiles) throws -> Double {
        let text = try String(contentsOfFile: wikiPath, encoding: .utf8)
        let tokens = Array(try files.tokenizer().encode(String(text.prefix(2000))).prefix(64))
        let logits = try LlamaModel(files: files, backend: Backends.cpu).logits(tokens).values
        return (logits.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(max(logits.count, 1))).squareRoot()
    }
}
