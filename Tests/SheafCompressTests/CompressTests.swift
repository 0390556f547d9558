import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafEval
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

/// Basis Sharing / SVD-LLM / plain SVD on the tiny random model of ForwardTests: exactness at
/// full rank, the optimality of whitening, backend agreement, the checkpoint and its export.
/// Progress lines collected by an escaping closure.
final class Lines: @unchecked Sendable {
    private(set) var all: [String] = []
    func append(_ line: String) { all.append(line) }
}

enum CompressFixture {
    /// 6 windows of 40 random tokens: 240 rows, more than the widest input (96), so every
    /// Gram is positive definite.
    static let windows: [[Int32]] = {
        var rng = SplitMix64(seed: 11)
        return (0..<6).map { _ in (0..<40).map { _ in Int32(rng.next() % 101) } }
    }()

    static let evalTokens: [Int32] = [5, 17, 99, 0, 42, 42, 7, 100, 63, 1, 2, 3, 88, 21, 34, 55, 89, 13, 8, 5, 3, 77, 64, 12]

    static func options(_ method: WhitenedSVDMethod.Variant, ratio: Double = 0.5, groupSize: Int? = nil, refit: CompressionOptions.Refit = .off,
                        ranks: [MatrixType: Int] = [:]) -> CompressionOptions {
        var o = CompressionOptions()
        o.method = method
        o.ratio = ratio
        o.groupSize = groupSize
        o.refit = refit
        o.rankOverrides = ranks
        return o
    }

    /// Runs the whitened-SVD method with `options` through the shared driver; the method holds
    /// the factored groups afterwards.
    static func compress(
        _ source: ModelFiles, _ backend: any Backend, _ options: CompressionOptions, windows: [[Int32]] = windows,
        cache: GramCache? = nil, progress: @escaping (String) -> Void = { _ in }
    ) throws -> (result: CompressionResult, groups: [FactoredGroup]) {
        let method = try WhitenedSVDMethod(options: options, config: source.config)
        let r = try Compressor.compress(files: source, backend: backend, windows: windows, method: method, cache: cache, progress: progress)
        return (r, method.groups)
    }

    /// Every type at its largest rank for group size 2 on the tiny model (hidden 64, MLP 96).
    static let fullRanks: [MatrixType: Int] = [.q: 64, .k: 64, .v: 64, .o: 64, .gate: 64, .up: 64, .down: 64]

    static func write(_ r: CompressionResult, source: ModelFiles, tag: String) throws -> ModelFiles {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-compressed-\(getpid())-\(tag)").path
        _ = try CompressedCheckpoint.write(
            r, source: source, provenance: .init(sheafVersion: "test", calibration: nil, sourceChecksum: "test"), to: out, replace: true)
        return try ModelFiles.open(out)
    }

    /// The largest condition number λmax/λmin of the model's calibration Grams: how much the
    /// calibration weighting can magnify a relative error in the weights.
    static func gramCondition(_ files: ModelFiles) throws -> Double {
        var worst = 1.0
        for layer in try Calibration.collectGrams(files: files, backend: Backends.cpu, windows: windows) {
            for g in layer.values {
                let lambda = try LAPACK.symmetricEigenvalues(g)
                worst = max(worst, (lambda.max() ?? 1) / max(lambda.min() ?? 1, .leastNormalMagnitude))
            }
        }
        return worst
    }

    /// Relative error, in the calibration norm ‖X·ᵀ‖, of a rank-k product of factors stored as
    /// Float32: each entry rounds once per factor and the k-term product adds γ_k, so the product
    /// errs by γ_{k+2}·|B||C| with ‖|B||C|‖² ≤ k·‖BC‖² (κ, as in Roundoff.nmse), magnified by at
    /// most κ₂(G) in squared calibration norm.
    static func factorRounding(rank k: Int, gramCondition: Double) -> Double {
        Roundoff.gamma(k + 2, unit: Roundoff.float32) * (Double(k) * gramCondition).squareRoot()
    }

    static func nmse(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        return num / den
    }
}

extension BackendSuites {
    @Suite struct Compress {
        typealias F = CompressFixture

        func logits(_ files: ModelFiles, _ backend: any Backend) throws -> [Float] {
            try LlamaModel(files: files, backend: backend).logits(F.evalTokens).values
        }

        /// Full rank (k = min(d_in, n·d_out)) reproduces the dense model to float rounding, with
        /// and without the coefficient refit, and the exported dense folder equals the checkpoint.
        @Test(arguments: [CompressionOptions.Refit.off, .on])
        func fullRankReproducesDense(refit: CompressionOptions.Refit) throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 21))
            let (r, groups) = try F.compress(source, Backends.cpu, F.options(.basisSharing, groupSize: 2, refit: refit, ranks: F.fullRanks))
            #expect(groups.count == 5 + 2 * 2)  // q, k, v, gate, up shared by both layers; o, down per layer
            let compressed = try F.write(r, source: source, tag: "full-\(refit)")
            #expect(compressed.manifest?.method.options["refit"]?.boolValue == (refit == .on))
            #expect(compressed.manifest?.modules.count == 2 * 7 && compressed.manifest?.formatVersion == 3)
            let dense = try logits(source, Backends.cpu), factored = try logits(compressed, Backends.cpu)
            // Two computations of the logits, one with a rank-64 product (and its Float32 factors)
            // after each linear: the forward path's bound (Support.swift).
            let bound = ForwardPath.logitsNMSEBetween(source.config, keys: F.evalTokens.count, rank: 64 + 2)
            #expect(F.nmse(factored, dense) < bound, "nMSE \(F.nmse(factored, dense)) (bound \(bound))")
            let kappa = try F.gramCondition(source)
            for g in groups {
                // At full rank only the factors' Float32 rounding remains.
                let rounding = pow(F.factorRounding(rank: g.rank, gramCondition: kappa), 2)
                #expect(g.error < rounding, "\(g.type) \(g.layers): error \(g.error) (bound \(rounding))")
            }

            let exported = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-exported-\(getpid())-\(refit)").path
            try CompressedCheckpoint.exportDense(compressed, to: exported, replace: true)
            let hf = try ModelFiles.open(exported)
            #expect(hf.manifest == nil && hf.tensorNames == source.tensorNames)
            // The export multiplies the same Float32 factors once (rank-64 products rounded to
            // Float32), then runs dense: within the same two-computation bound.
            let exportedError = F.nmse(try logits(hf, Backends.cpu), factored)
            #expect(exportedError < bound, "exported vs factored nMSE \(exportedError) (bound \(bound))")
        }

        /// --matrices q,k,v,o compresses attention only: the MLP stays dense, bit for bit, and the
        /// achieved ratio counts the dense MLP weights.
        @Test func matricesLeaveTheRestDense() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 23))
            var o = F.options(.basisSharing, ratio: 0.5, groupSize: 2)
            o.matrices = [.q, .k, .v, .o]
            let (r, groups) = try F.compress(source, Backends.cpu, o)
            #expect(Set(groups.map(\.type)) == [.q, .k, .v, .o])
            let compressed = try F.write(r, source: source, tag: "attention-only")
            #expect(compressed.manifest?.modules.count == 2 * 4)
            for layer in 0..<2 {
                for t in [MatrixType.gate, .up, .down] {
                    let name = t.module(layer: layer) + ".weight"
                    #expect(try compressed.float32(name) == source.float32(name))
                }
            }
            let c = source.config, m = compressed.manifest!
            let attention = [MatrixType.q, .k, .v, .o].reduce(0) { $0 + $1.shape(c).dOut * $1.shape(c).dIn } * c.layerCount
            #expect(m.storedLinearParameters > m.denseLinearParameters - attention, "only attention parameters removed")
            var bad = o
            bad.rankOverrides = [.gate: 4]
            #expect { try WhitenedSVDMethod(options: bad, config: c) } throws: { "\($0)".contains("--matrices leaves dense") }
        }

        /// Basis Sharing with n = 1 is SVD-LLM: the same factors, bit for bit.
        @Test func groupSizeOneIsSVDLLM() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 22))
            let shared = try F.compress(source, Backends.cpu, F.options(.basisSharing, groupSize: 1)).groups
            let svdLLM = try F.compress(source, Backends.cpu, F.options(.svdLLM)).groups
            #expect(shared.count == 14 && svdLLM.count == 14)
            for (a, b) in zip(shared, svdLLM) {
                #expect(a.type == b.type && a.layers == b.layers && a.rank == b.rank)
                #expect(a.basisT.values == b.basisT.values && a.coefficientsT.map(\.values) == b.coefficientsT.map(\.values))
            }
        }

        /// Whitening minimises the calibration-weighted error at a given rank: SVD-LLM's error is
        /// never above plain SVD's, matrix by matrix, and clearly below it in total.
        @Test func whitenedBeatsPlainSVD() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 23))
            let (whitenedResult, whitened) = try F.compress(source, Backends.cpu, F.options(.svdLLM))
            let (plainResult, plain) = try F.compress(source, Backends.cpu, F.options(.svd))
            var sumW = 0.0, sumP = 0.0
            let kappa = try F.gramCondition(source)
            for (w, p) in zip(whitened, plain) {
                #expect(w.rank == p.rank)
                // Exact arithmetic gives w ≤ p; the Float32 factors move each √error by at most ρ.
                let rho = F.factorRounding(rank: w.rank, gramCondition: kappa)
                let slack = 2 * rho * (w.error.squareRoot() + p.error.squareRoot()) + 2 * rho * rho
                #expect(w.error <= p.error + slack, "\(w.type) \(w.layers): whitened \(w.error), plain \(p.error) (slack \(slack))")
                sumW += w.error
                sumP += p.error
            }
            #expect(sumW < 0.9 * sumP, "whitened \(sumW), plain \(sumP)")
            let provenance = CompressedCheckpoint.Provenance(sheafVersion: "test", calibration: nil, sourceChecksum: "test")
            #expect(try CompressedCheckpoint.manifest(whitenedResult, source: source, provenance: provenance).storedLinearParameters
                == CompressedCheckpoint.manifest(plainResult, source: source, provenance: provenance).storedLinearParameters)
        }

        /// cpu and opencl (PoCL) give the same factors, compared by singular values and by the
        /// reconstructed weights, and the same perplexity.
        @Test func backendsAgree() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 24))
            let options = F.options(.basisSharing, ratio: 0.3, groupSize: 2)
            let (cpuResult, cpu) = try F.compress(source, Backends.cpu, options)
            let (clResult, cl) = try F.compress(source, try Backends.opencl(), options)
            // The two backends' Grams differ by ε_G (ForwardTests' gram bound, 240 rows, 40 keys);
            // the whitening factor then by at most κ₂(G)·ε_G relative (Cholesky perturbation), and
            // so does the whitened stack M (Weyl: |Δσᵢ| ≤ ‖ΔM‖₂ ≤ σ₁·κ₂(G)·ε_G).
            let rho = ForwardPath.logitsNMSE(source.config, keys: 40).squareRoot()
            let gramError = 2 * 2 * rho + 2 * Roundoff.gamma(240 + 2, unit: Roundoff.float32) * 240.0.squareRoot()
            let stackError = try F.gramCondition(source) * gramError
            var reconstructionBound = 0.0
            for (a, b) in zip(cpu, cl) {
                let k = a.rank, sigma = a.singularValues
                let sa = Array(sigma.prefix(k)).map(Float.init), sb = Array(b.singularValues.prefix(k)).map(Float.init)
                let svBound = pow(stackError * sigma[0], 2) * Double(k) / sigma.prefix(k).reduce(0) { $0 + $1 * $1 }
                #expect(F.nmse(sb, sa) < svBound, "\(a.type) \(a.layers) singular values: \(F.nmse(sb, sa)) (bound \(svBound))")
                // The rank-k truncation moves by ‖ΔM‖·(1 + 2σ₁/(σ_k − σ_{k+1})) (Wedin's sin θ
                // theorem for the kept subspaces), relative to ‖M_k‖ ≥ σ₁: a cut inside a cluster
                // of close singular values is allowed to swap vectors, a cut at a gap is not.
                let gap = k < sigma.count ? sigma[k - 1] - sigma[k] : sigma[k - 1]
                let bound = pow(stackError * (1 + 2 * sigma[0] / max(gap, .leastNormalMagnitude)), 2)
                reconstructionBound = max(reconstructionBound, bound)
                for i in a.layers.indices {
                    let ra = try a.reconstruction(i).asFloat.values, rb = try b.reconstruction(i).asFloat.values
                    #expect(F.nmse(rb, ra) < bound, "\(a.type) layer \(a.layers[i]): reconstruction nMSE \(F.nmse(rb, ra)) (bound \(bound))")
                }
            }
            let filesCPU = try F.write(cpuResult, source: source, tag: "cpu"), filesCL = try F.write(clResult, source: source, tag: "cl")
            let pCPU = try Perplexity.evaluate(try LlamaModel(files: filesCPU, backend: Backends.cpu), windows: [F.evalTokens]).perplexity
            let pCL = try Perplexity.evaluate(try LlamaModel(files: filesCL, backend: try Backends.opencl()), windows: [F.evalTokens]).perplexity
            // Logits differ by the weights' reconstruction difference plus two forward passes.
            let logitsBound = min(1, reconstructionBound + ForwardPath.logitsNMSEBetween(source.config, keys: F.evalTokens.count))
            let pBound = ForwardPath.perplexityRelative(logitsNMSE: logitsBound, logits: try logits(filesCPU, Backends.cpu))
            #expect(abs(pCL - pCPU) / pCPU < pBound, "perplexity cpu \(pCPU), opencl \(pCL) (bound \(pBound))")
        }

        /// The second compression of the same model and windows reads the cached Grams and
        /// gives the same factors.
        @Test func gramCacheSkipsCalibration() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 25))
            let root = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-grams-\(getpid())").path
            try? FileManager.default.removeItem(atPath: root)
            let cache = GramCache(root: root)
            let first = try F.compress(source, Backends.cpu, F.options(.svdLLM), cache: cache)
            let second = try F.compress(source, Backends.cpu, F.options(.svdLLM), cache: cache)
            #expect(!first.result.gramsFromCache && second.result.gramsFromCache)
            #expect(first.groups.map(\.basisT.values) == second.groups.map(\.basisT.values))
            let other = try F.compress(source, Backends.cpu, F.options(.svdLLM), windows: Array(F.windows.dropLast()), cache: cache)
            #expect(!other.result.gramsFromCache, "other windows must not hit the cache")
            // Another backend (here the cpu backend's portable loops) computes its own Grams.
            let portable = try F.compress(source, Backends.cpuPortable, F.options(.svdLLM), cache: cache)
            #expect(!portable.result.gramsFromCache, "another backend must not hit the cache")
            // A damaged entry is recalibrated, not fatal.
            let entry = root + "/" + GramCache.key(modelChecksum: try source.checksum(), backend: Backends.cpu, windows: F.windows)
            try Data("not a safetensors file".utf8).write(to: URL(fileURLWithPath: entry + "/layer-0001.safetensors"))
            let warnings = Lines()
            let damaged = try F.compress(source, Backends.cpu, F.options(.svdLLM), cache: cache, progress: { warnings.append($0) })
            #expect(!damaged.result.gramsFromCache && warnings.all.contains { $0.contains("cannot be read") }, "\(warnings.all)")
            #expect(damaged.groups.map(\.basisT.values) == first.groups.map(\.basisT.values))
            #expect(cache.contains(GramCache.key(modelChecksum: try source.checksum(), backend: Backends.cpu, windows: F.windows), layers: 2))
            // A poisoned entry (a NaN inside a well-formed file with its old checksum) fails its
            // checksum: recomputed with a notice, then read from the cache again.
            let layerFile = entry + "/layer-0000.safetensors"
            let original = try SafetensorsFile(path: layerFile)
            let poisoned = try original.tensorNames.map { (name) throws -> TensorToWrite in
                var bytes = try original.rawBytes(name)
                if name == "attention" { withUnsafeBytes(of: Double.nan) { for (i, b) in $0.enumerated() { bytes[i] = b } } }
                return try TensorToWrite(name: name, shape: try original.info(name).shape, dtype: .F64, bytes: bytes)
            }
            try SafetensorsWriter.write(poisoned, metadata: original.metadata, to: layerFile)
            let notices = Lines()
            let recomputed = try F.compress(source, Backends.cpu, F.options(.svdLLM), cache: cache, progress: { notices.append($0) })
            #expect(!recomputed.result.gramsFromCache && notices.all.contains { $0.contains("checksum") }, "\(notices.all)")
            #expect(recomputed.groups.map(\.basisT.values) == first.groups.map(\.basisT.values))
            #expect(try F.compress(source, Backends.cpu, F.options(.svdLLM), cache: cache).result.gramsFromCache)
        }

        /// Options that cannot work are refused before any work, one line each.
        @Test func impossibleOptionsAreRefused() throws {
            let config = try ModelFiles.open(try TinyModel.write(seed: 26)).config
            func refusal(_ o: CompressionOptions) -> String? {
                do { _ = try CompressionPlan(config: config, options: o); return nil } catch { return error.description }
            }
            #expect(refusal(F.options(.basisSharing, ratio: 0)).map { $0.contains("--ratio must be in (0, 1)") } == true)
            #expect(refusal(F.options(.basisSharing, ratio: 1.2)).map { $0.contains("--ratio must be in (0, 1)") } == true)
            #expect(refusal(F.options(.basisSharing, ratio: 0.999)).map { $0.contains("leaves rank 0") } == true)
            #expect(refusal(F.options(.basisSharing, groupSize: 3)).map { $0.contains("--group-size must be between 1 and the model's 2 layers") } == true)
            #expect(refusal(F.options(.svdLLM, groupSize: 2)).map { $0.contains("svd-llm") } == true)
            #expect(refusal(F.options(.basisSharing, ranks: [.down: 97])).map { $0.contains("--rank down_proj=97 is outside 1...64") } == true)
            #expect(refusal(F.options(.basisSharing, ratio: 0.2)) == nil)
            // The rank formula of BENCHMARK.md.
            #expect(MatrixType.rank(dIn: 576, dOut: 1536, layers: 2, ratio: 0.2) == 388)  // 388.04
            #expect(MatrixType.rank(dIn: 576, dOut: 576, layers: 1, ratio: 0.2) == 230)  // 230.4
        }
    
        /// The command as a user runs it on the real model, reduced: Basis Sharing at r = 0.2,
        /// n = 2, calibrated on 8 windows of 256 tokens; the checkpoint evaluates, its dense export
        /// gives the same perplexity, and the achieved ratio is within 0.5 points of the request.
        @Test func realModelCompressEvalExport() throws {
            try RealFixtures.require(RealFixtures.modelPath)
            try RealFixtures.require(RealFixtures.wikiPath)
            let cli = SheafCLI()
            let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-real-\(getpid())").path
            try? FileManager.default.removeItem(atPath: tmp)
            let out = tmp + "/bs", dense = tmp + "/dense"
            let c = try cli.sheaf(["compress", RealFixtures.modelPath, "--out", out, "--ratio", "0.2", "--calib-windows", "8",
                                   "--calib-len", "256", "--no-cache", "--json"])
            #expect(c.status == 0, "\(c.stderr)")
            let report = try JSONSerialization.jsonObject(with: Data(c.stdout.utf8)) as? [String: Any]
            let manifest = report?["manifest"] as? [String: Any]
            let achieved = manifest?["achievedRatio"] as? Double ?? 0
            #expect(abs(achieved - 0.2) < 0.005, "achieved ratio \(achieved)")
            let method = manifest?["method"] as? [String: Any]
            #expect(method?["name"] as? String == "basis-sharing")
            #expect(((method?["report"] as? [String: Any])?["groups"] as? [Any])?.count == 5 * 15 + 2 * 30)
            #expect((manifest?["modules"] as? [String: Any])?.count == 7 * 30)
            #expect(c.stderr.contains("ETA"))

            func ppl(_ model: String) throws -> Double {
                let r = try cli.sheaf(["eval", model, "--text", RealFixtures.wikiPath, "--ctx", "1024", "--windows", "1", "--json"])
                #expect(r.status == 0, "\(r.stderr)")
                return (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["perplexity"] as? Double ?? .nan
            }
            let compressed = try ppl(out)
            // Dense is ≈ 20 on this window; r = 0.2 with a tiny calibration costs a lot, but not everything.
            #expect(compressed > 21 && compressed < 5000, "compressed perplexity \(compressed)")
            let e = try cli.sheaf(["export", out, "--out", dense])
            #expect(e.status == 0, "\(e.stderr)")
            let exported = try ppl(dense)
            // The dense export and the factored layers are two float32 computations of one model
            // (the factored one with a rank ≤ 576 product after each linear), over 1023 predictions.
            let real = try ModelFiles.open(RealFixtures.modelPath)
            let bound = ForwardPath.realPerplexityRelative(
                real.config, keys: 1024, rank: 576, predictions: 1023, logitRMS: try RealFixtures.logitRMS(real))
            #expect(abs(exported - compressed) / compressed < bound, "exported \(exported), compressed \(compressed) (bound \(bound))")
            let g = try cli.sheaf(["generate", out, "--prompt", "The capital of France is", "--max-tokens", "4"])
            #expect(g.status == 0, "\(g.stderr)")
            // --json: the prompt's pass and the decoding timed apart, the summary line kept.
            let j = try cli.sheaf(["generate", out, "--prompt", "The capital of France is", "--max-tokens", "4", "--json"])
            let generation = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any]
            #expect(j.status == 0 && j.stderr.contains("generate: ") && j.stderr.contains(" tokens in "), "\(j.stderr)")
            #expect(generation?["promptTokens"] as? Int == 5, "\(j.stdout)")
            let generated = generation?["generatedTokens"] as? Int ?? 0
            #expect(generated >= 1 && generated <= 4 && (generation?["text"] as? String) != nil, "\(j.stdout)")
            #expect((generation?["promptTokensPerSecond"] as? Double ?? 0) > 0, "\(j.stdout)")
            #expect(generated < 2 || (generation?["generationTokensPerSecond"] as? Double ?? 0) > 0, "\(j.stdout)")
            try? FileManager.default.removeItem(atPath: tmp)
        }

        /// Bad input through the CLI: one line, non-zero exit, nothing written to --out.
        @Test func cliRefusesBadInput() throws {
            let cli = SheafCLI()
            let model = try TinyModel.write(seed: 27)
            let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-bad-\(getpid())").path
            try? FileManager.default.removeItem(atPath: tmp)
            try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            let short = tmp + "/short.txt"
            try "a few words".write(toFile: short, atomically: true, encoding: .utf8)
            let out = tmp + "/out"
            let cases: [([String], Int32, String)] = [
                (["--share", "q,attn"], 2, "--share: 'attn' is not a linear layer"),
                (["--ratio", "1.5"], 1, "--ratio must be in (0, 1)"),
                (["--group-size", "5"], 1, "--group-size must be between 1 and the model's 2 layers"),
                (["--method", "magic"], 2, "--method must be one of basis-sharing, svd-llm, svd"),
                (["--rank", "q=0"], 1, "--rank q_proj=0 is outside"),
                (["--dtype", "f8"], 2, "--dtype must be one of f32, f16, bf16, q8, q4, got 'f8'"),
                (["--dtype", "q8", "--quant-group", "0"], 2, "--quant-group must be a positive number of values, got 0"),
                (["--embedding-dtype", "q2"], 2, "--embedding-dtype must be auto or one of f32, f16, bf16, q8, q4, got 'q2'"),
            ]
            for (extra, status, message) in cases {
                let r = try cli.sheaf(["compress", model, "--out", out, "--calib", short, "--no-cache"] + extra)
                #expect(r.status == status && r.stderr.contains(message), "\(extra): \(r.status) \(r.stderr)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(extra): \(r.stderr)")
            }
            #expect(!FileManager.default.fileExists(atPath: out))
            // The tiny model has no tokenizer: a too-short text is caught by the real one below.
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let exists = try cli.sheaf(["compress", model, "--out", out, "--no-cache"])
            #expect(exists.status == 1 && exists.stderr.contains("output folder exists (pass --force to replace it)"), "\(exists.stderr)")
            try RealFixtures.require(RealFixtures.modelPath)
            let tooShort = try cli.sheaf(["compress", RealFixtures.modelPath, "--out", tmp + "/real", "--calib", short, "--no-cache"])
            #expect(tooShort.status == 1 && tooShort.stderr.contains("fewer than one window of 512"), "\(tooShort.stderr)")
            #expect(!FileManager.default.fileExists(atPath: tmp + "/real"))
            let notCompressed = try cli.sheaf(["export", model, "--out", tmp + "/x"])
            #expect(notCompressed.status == 1 && notCompressed.stderr.contains("not a Sheaf compressed checkpoint"), "\(notCompressed.stderr)")
            try? FileManager.default.removeItem(atPath: tmp)
        }
    }
}
