import Foundation
import SheafBackend
import SheafCore
import SheafEval
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

extension BackendSuites {
    @Suite struct Forward {
        static let tokens: [Int32] = [5, 17, 99, 0, 42, 42, 7, 100, 63, 1, 2, 3, 88, 21, 34, 55, 89, 13, 8, 5, 3]

        /// cpu and opencl logits equal the reference backend's on a tiny random model.
        @Test(arguments: [false, true])
        func backendsAgreeOnLogits(attentionBias: Bool) throws {
            let dir = try TinyModel.write(attentionBias: attentionBias)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let files = try ModelFiles.open(dir)
            let want = try LlamaModel(files: files, backend: Backends.reference).logits(Self.tokens)
            let bound = ForwardPath.logitsNMSE(files.config, keys: Self.tokens.count)  // Float32 vs the Float64 reference
            for be: any Backend in [Backends.cpu, try Backends.opencl(), try Backends.openclGPUVariant()] {
                let got = try LlamaModel(files: files, backend: be).logits(Self.tokens)
                let (error, failure) = Parity.compare(got.values, want.values)
                #expect(failure.isEmpty && error < bound, "\(be.kind) (\(be.deviceName)): normalised MSE \(error) (bound \(bound)) \(failure)")
            }
        }

        /// A tied model holds its embedding once (the head's Eᵀ on the backend, rows gathered from
        /// it): its logits equal, bit for bit, those of the same model written untied with
        /// lm_head = the embedding (which keeps a host table), on cpu and opencl.
        @Test func tiedEmbeddingGathersFromTheHead() throws {
            let tiedDir = try TinyModel.write(seed: 11, tied: true)
            let untiedDir = tiedDir + "-untied"
            try FileManager.default.createDirectory(atPath: untiedDir, withIntermediateDirectories: true)
            defer { for d in [tiedDir, untiedDir] { try? FileManager.default.removeItem(atPath: d) } }
            let tied = try ModelFiles.open(tiedDir)
            var config = tied.config
            config.tiedEmbeddings = false
            try config.configJSON().write(to: URL(fileURLWithPath: untiedDir + "/config.json"))
            var tensors = try tied.tensorNames.map { name in
                try TensorToWrite(name: name, shape: try tied.info(name).shape, values: try tied.float32(name))
            }
            tensors.append(try TensorToWrite(name: "lm_head.weight", shape: [101, 64], values: try tied.float32("model.embed_tokens.weight")))
            try SafetensorsWriter.writeModel(tensors, to: untiedDir)
            let untied = try ModelFiles.open(untiedDir)
            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let a = try LlamaModel(files: tied, backend: be).logits(Self.tokens)
                let b = try LlamaModel(files: untied, backend: be).logits(Self.tokens)
                #expect(a.values == b.values, "\(be.kind): tied and untied logits differ")
            }
            #expect(throws: SheafError.self) { try LlamaModel(files: tied, backend: Backends.cpu).logits([5, 101]) }
        }

        /// Causality: the logits of a prefix do not depend on the tokens after it.
        @Test func laterTokensDoNotChangeEarlierLogits() throws {
            let dir = try TinyModel.write()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let files = try ModelFiles.open(dir)
            let model = try LlamaModel(files: files, backend: Backends.cpu)
            let full = try model.logits(Self.tokens), prefix = try model.logits(Array(Self.tokens.prefix(8)))
            let (error, _) = Parity.compare(Array(full.values.prefix(8 * 101)), prefix.values)
            // A BLAS may block products of 8 and of 21 rows differently: two computations' bound.
            let between = ForwardPath.logitsNMSEBetween(files.config, keys: Self.tokens.count)
            #expect(error < between, "prefix vs full: \(error) (bound \(between))")
            // The NLL path gives the log-softmax of the same logits.
            let nll = try model.nextTokenNLL(Self.tokens, chunkRows: 5)
            for r in [0, 7, 19] {
                let row = full.values[(r * 101)..<((r + 1) * 101)].map(Double.init)
                let m = row.max()!
                let expected = m + log(row.reduce(0) { $0 + exp($1 - m) }) - row[Int(Self.tokens[r + 1])]
                // Chunked logits differ from the full run's by √(between·Σx²) at most per element
                // (twice in the NLL), plus the log-sum-exp's own rounding (Parity.crossEntropy).
                let bound = 2 * (between * row.reduce(0) { $0 + $1 * $1 }).squareRoot()
                    + Roundoff.gamma(row.count + 48, unit: Roundoff.float32) * (1 + abs(m) + abs(row[Int(Self.tokens[r + 1])]))
                #expect(abs(Double(nll[r]) - expected) < bound, "row \(r): \(nll[r]) vs \(expected) (bound \(bound))")
            }
        }

        @Test func nanWeightsAreNamed() throws {
            let dir = try TinyModel.write(nanIn: "model.layers.1.mlp.up_proj.weight")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            #expect { try LlamaModel(files: try ModelFiles.open(dir), backend: Backends.cpu) } throws: {
                "\($0)".contains("model.layers.1.mlp.up_proj.weight")
            }
        }

        @Test func windowsRefuseImpossibleRequests() throws {
            let tokens = [Int32](repeating: 1, count: 100)
            #expect(try Perplexity.windows(tokens, context: 32, count: nil).count == 3)
            #expect(throws: SheafError.self) { try Perplexity.windows(tokens, context: 200, count: nil) }
            #expect(throws: SheafError.self) { try Perplexity.windows(tokens, context: 32, count: 4) }
            #expect(throws: SheafError.self) { try Perplexity.windows(tokens, context: 32, count: 0) }
        }
    }
}

extension BackendSuites.Forward {
    /// Decoding token by token through the KV cache gives the same greedy tokens as running
    /// the whole growing sequence each step.
    @Test func cachedDecodingMatchesFullRecompute() throws {
        let dir = try TinyModel.write()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for be: any Backend in [Backends.cpu, try Backends.opencl()] {
            let model = try LlamaModel(files: try ModelFiles.open(dir), backend: be)
            let prompt = Array(Self.tokens.prefix(5))
            let cached = try model.generate(prompt: prompt, maxTokens: 8)
            var sequence = prompt, recomputed: [Int32] = []
            for _ in 0..<8 {
                let logits = try model.logits(sequence)
                let last = Array(logits.values.suffix(logits.cols))
                let next = Int32(last.indices.max { last[$0] < last[$1] }!)
                recomputed.append(next)
                sequence.append(next)
            }
            #expect(cached == recomputed, "\(be.kind)")
        }
    }
}

extension BackendSuites {
    /// The calibration hooks: per layer, one Float64 Gram per distinct linear input.
    @Suite struct CalibrationHooks {
        static let windows: [[Int32]] = [[5, 17, 99, 0, 42, 42, 7, 100, 63], [1, 2, 3, 88, 21, 34, 55, 89, 13], [8, 5, 3, 2, 1, 1, 0, 9, 4]]

        @Test func gramsEqualXtXOfTheCapturedInputsAndAgreeAcrossBackends() throws {
            let dir = try TinyModel.write()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let files = try ModelFiles.open(dir)
            var captured: [[LayerGrams.Input: [Matrix<Float>]]] = []
            let want = try Calibration.collectGrams(
                files: files, backend: Backends.reference, windows: Self.windows, capture: true,
                onLayer: { _, grams in captured.append(grams.captured ?? [:]) })
            #expect(want.count == 2)
            for (layer, grams) in want.enumerated() {
                #expect(Set(grams.keys) == Set(LayerGrams.Input.allCases))
                for (input, g) in grams {
                    // The three windows run as one batch of 27 rows.
                    let xs = captured[layer][input] ?? []
                    #expect(xs.reduce(0) { $0 + $1.rows } == 27 && xs.allSatisfy { $0.cols == g.rows })
                    var xtx = Matrix<Double>.zeros(rows: g.rows, cols: g.cols)
                    for x in xs {
                        for r in 0..<x.rows {
                            for i in 0..<x.cols { for j in 0..<x.cols { xtx[i, j] += Double(x[r, i]) * Double(x[r, j]) } }
                        }
                    }
                    let (error, failure) = Parity.compare(g.values, xtx.values)
                    // Both Float64 sums of 27 products of the same Float32 inputs.
                    let bound = Roundoff.nmseBetween(terms: 27, unit: Roundoff.float64)
                    #expect(failure.isEmpty && error < bound, "layer \(layer) \(input): \(error) (bound \(bound))")
                }
            }
            // Batching windows changes nothing: each window alone (its own RoPE positions and
            // causal mask) gives Grams that sum to the batch's.
            var sum = want.map { $0.mapValues { Matrix<Double>.zeros(rows: $0.rows, cols: $0.cols) } }
            for w in Self.windows {
                let alone = try Calibration.collectGrams(files: files, backend: Backends.reference, windows: [w])
                for layer in 0..<2 {
                    for (input, g) in alone[layer] { for i in 0..<g.count { sum[layer][input]!.values[i] += g.values[i] } }
                }
            }
            for layer in 0..<2 {
                for input in LayerGrams.Input.allCases {
                    let (error, failure) = Parity.compare(sum[layer][input]!.values, want[layer][input]!.values)
                    // 27 Float64 product terms, then 3 more adds across windows.
                    let bound = Roundoff.nmseBetween(terms: 27 + 3, unit: Roundoff.float64)
                    #expect(failure.isEmpty && error < bound, "window by window, layer \(layer) \(input): \(error) (bound \(bound))")
                }
            }
            // A layer input X errs by ρ ≤ √logitsNMSE relative (its path is a prefix of the logits'),
            // so XᵀX by 2ρ, plus the Float32 product of 27 rows: (2ρ + γ₂₉·√27)².
            let rho = ForwardPath.logitsNMSE(files.config, keys: 9).squareRoot()
            let gramBound = pow(2 * rho + Roundoff.gamma(29, unit: Roundoff.float32) * 27.0.squareRoot(), 2)
            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let got = try Calibration.collectGrams(files: files, backend: be, windows: Self.windows)
                for layer in 0..<2 {
                    for input in LayerGrams.Input.allCases {
                        let (error, failure) = Parity.compare(got[layer][input]!.values, want[layer][input]!.values)
                        #expect(failure.isEmpty && error < gramBound, "\(be.kind) layer \(layer) \(input): \(error) (bound \(gramBound))")
                    }
                }
            }
        }

        /// A caller-supplied block source (compressed layers, later) is what calibration runs.
        @Test func suppliedLayersAreTheOnesRun() throws {
            let dir = try TinyModel.write(), other = try TinyModel.write(seed: 8)
            defer {
                try? FileManager.default.removeItem(atPath: dir)
                try? FileManager.default.removeItem(atPath: other)
            }
            let files = try ModelFiles.open(dir)
            let foreign = WeightLoader(files: try ModelFiles.open(other), backend: Backends.cpu)
            var requested: [Int] = []
            let mixed = try Calibration.collectGrams(
                files: files, backend: Backends.cpu, windows: Self.windows,
                layer: { (i) throws(SheafError) in
                    requested.append(i)
                    return try foreign.layer(i)
                })
            let plain = try Calibration.collectGrams(files: files, backend: Backends.cpu, windows: Self.windows)
            #expect(requested == [0, 1])
            // Layer 0's attention input is the embedding normed by layer 0's own norm weight:
            // another model's layer 0 changes it, so the supplied layers were used.
            let (error, _) = Parity.compare(mixed[0][.attention]!.values, plain[0][.attention]!.values)
            // Rounding alone moves a Gram by at most (2ρ + γ₂₉·√27)² (above); another model's norm
            // weights move it by O(1).
            let rho = ForwardPath.logitsNMSE(files.config, keys: 9).squareRoot()
            #expect(error > pow(2 * rho + Roundoff.gamma(29, unit: Roundoff.float32) * 27.0.squareRoot(), 2), "\(error)")
        }

        @Test func calibrationWindowsFollowTheProtocol() throws {
            let tokens = (0..<1000).map(Int32.init)
            let w = try CalibrationWindows.windows(tokens, count: 4, length: 100)
            #expect(w.map(\.first!) == [0, 225, 450, 675] && w.allSatisfy { $0.count == 100 })
            #expect(throws: SheafError.self) { try CalibrationWindows.windows(Array(tokens.prefix(50)), count: 4, length: 100) }
        }
    }
}
