import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafEval
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

/// Points around `centres` well-separated centres (unit-scale offsets, noise 0.05): no point is
/// near a tie between two centroids, so backends that round differently still agree on labels.
func clusteredPoints(_ m: Int, _ d: Int, centres: Int, seed: UInt64) -> Matrix<Float> {
    var rng = SplitMix64(seed: seed)
    let c = Matrix<Float>.random(rows: centres, cols: d, seed: seed &+ 1)
    var p = Matrix<Float>.zeros(rows: m, cols: d)
    for i in 0..<m {
        let home = Int(rng.next() % UInt64(centres))
        for j in 0..<d { p[i, j] = c[home, j] + 0.05 * rng.nextSignedUnitFloat() }
    }
    return p
}

extension BackendSuites {
    @Suite struct KMeansSuite {
        /// cpu and opencl from the same initial centroids: the same labels, the objective within
        /// 1e-6 relative, never increasing, and the run ends by its tolerance, not by a rise.
        @Test func backendsAgreeFromTheSameStart() throws {
            for (m, d, k, seed) in [(300, 48, 12, UInt64(3)), (257, 33, 7, 5), (64, 576, 9, 8)] {
                let points = clusteredPoints(m, d, centres: k, seed: seed)
                let initial = try KMeans.seedPlusPlus(points, clusters: k, seed: seed, backend: Backends.cpu)
                let options = KMeans.Options(clusters: k, maxIterations: 30, tolerance: 1e-9, seed: seed)
                let a = try KMeans.lloyd(points, initial: initial, options: options, backend: Backends.cpu)
                let b = try KMeans.lloyd(points, initial: initial, options: options, backend: try Backends.opencl())
                #expect(a.labels == b.labels, "m \(m) d \(d) k \(k): \(zip(a.labels, b.labels).filter { $0 != $1 }.count) labels differ")
                #expect(abs(a.objective - b.objective) <= 1e-6 * a.objective, "objectives \(a.objective) vs \(b.objective)")
                for r in [a, b] {
                    #expect(zip(r.objectives, r.objectives.dropFirst()).allSatisfy { $1 <= $0 }, "\(r.objectives)")
                    #expect(!r.stoppedOnIncrease && r.objective <= r.objectives.last!)
                }
            }
        }

        /// Seeded: the same seed gives the same clusters; k = m puts every point in its own cluster.
        @Test func deterministicAndExactAtKEqualsM() throws {
            let points = Matrix<Float>.random(rows: 40, cols: 17, seed: 4)
            let o = KMeans.Options(clusters: 6, seed: 11)
            let first = try KMeans.cluster(points, options: o, backend: Backends.cpu)
            let second = try KMeans.cluster(points, options: o, backend: Backends.cpu)
            #expect(first.labels == second.labels && first.centroids.values == second.centroids.values)
            let all = try KMeans.cluster(points, options: .init(clusters: 40, seed: 2), backend: Backends.cpu)
            #expect(all.objective == 0 && Set(all.labels).count == 40)
            for i in 0..<40 { for j in 0..<17 { #expect(all.centroids[Int(all.labels[i]), j] == points[i, j]) } }
            #expect(throws: SheafError.self) { try KMeans.cluster(points, options: .init(clusters: 41), backend: Backends.cpu) }
            #expect(throws: SheafError.self) { try KMeans.cluster(points, options: .init(clusters: 0), backend: Backends.cpu) }
        }

        /// Duplicated points leave clusters empty after seeding; each is re-seeded and filled.
        @Test func emptyClustersAreReseeded() throws {
            var points = Matrix<Float>.zeros(rows: 30, cols: 4)
            for i in 0..<30 { for j in 0..<4 { points[i, j] = Float(i % 3) + (i == 29 ? Float(j) : 0) } }
            // Start with two centroids on one point and one far away: one cluster gets nothing.
            var initial = Matrix<Float>.zeros(rows: 3, cols: 4)
            for j in 0..<4 { initial[2, j] = 100 }
            let r = try KMeans.lloyd(points, initial: initial, options: .init(clusters: 3), backend: Backends.cpu)
            #expect(r.reseeded >= 1 && Set(r.labels).count == 3, "reseeded \(r.reseeded), labels \(Set(r.labels))")
        }
    }

    @Suite struct SWSC {
        typealias F = CompressFixture

        static func compress(_ source: ModelFiles, _ arguments: [String: String], flags: Set<String> = [], backend: any Backend = Backends.cpu) throws
            -> (CompressionResult, ModelFiles)
        {
            let entry = MethodRegistry.standard.entry(arguments["method"] ?? "swsc")!
            let a = MethodArguments(values: arguments.filter { $0.key != "method" }.mapValues { [$0] }, flags: flags)
            let method = try entry.make(a, source.config)
            let r = try Compressor.compress(files: source, backend: backend, windows: F.windows, method: method)
            let tag = arguments.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "-")
            return (r, try F.write(r, source: source, tag: tag.replacingOccurrences(of: ",", with: "_")))
        }

        static func exported(_ files: ModelFiles, tag: String) throws -> ModelFiles {
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-swsc-export-\(getpid())-\(tag)").path
            try CompressedCheckpoint.exportDense(files, to: out, replace: true)
            return try ModelFiles.open(out)
        }

        func logits(_ files: ModelFiles, _ backend: any Backend) throws -> [Float] {
            try LlamaModel(files: files, backend: backend).logits(F.evalTokens).values
        }

        static func relativeError(_ a: [Float], _ b: [Float]) -> Double { F.nmse(a, b).squareRoot() }

        /// r = 0 is plain clustering: every exported weight is its channel's centroid, the mean
        /// (rounded to Float16) of its cluster as K-means finds it with the matrix's own seed.
        @Test(arguments: ClusteredLinear.Channels.allCases)
        func rankZeroIsPlainClustering(_ channels: ClusteredLinear.Channels) throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 31))
            let (_, compressed) = try Self.compress(source, ["clusters": "5", "residual-rank": "0", "channels": channels.rawValue, "seed": "7"])
            let hf = try Self.exported(compressed, tag: "r0-\(channels)")
            for layer in 0..<source.config.layerCount {
                for t in MatrixType.allCases {
                    let (dOut, dIn) = t.shape(source.config)
                    let w = try Matrix(rows: dOut, cols: dIn, values: try source.float32(t.module(layer: layer) + ".weight"))
                    let points = channels == .rows ? w : w.transposed
                    let km = try KMeans.cluster(points, options: .init(clusters: 5, seed: SWSCMethod.seed(7, layer: layer, type: t)), backend: Backends.cpu)
                    let got = try hf.float32(t.module(layer: layer) + ".weight")
                    var mismatches = 0
                    for o in 0..<dOut {
                        for i in 0..<dIn {
                            let c = channels == .rows ? km.centroids[Int(km.labels[o]), i] : km.centroids[Int(km.labels[i]), o]
                            if got[o * dIn + i] != HalfFloat.f16ToFloat(HalfFloat.floatToF16(c)) { mismatches += 1 }
                        }
                    }
                    #expect(mismatches == 0, "\(t) layer \(layer): \(mismatches) weights differ from their centroid")
                }
            }
        }

        /// Full residual rank reproduces W up to the Float16 rounding of the residual factors:
        /// Ŵ − W = δU·B + U·δB with |δ| ≤ u₁₆|·|, so ‖Ŵ − W‖ ≤ 2·u₁₆·‖U‖_F·‖B‖_F = 2·u₁₆·√r·‖E‖
        /// (U orthonormal, ‖B‖_F = ‖E‖_F), with E = W − W' whose size the r = 0 run reports.
        @Test func fullRankReproducesTheWeights() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 32))
            let (plain, _) = try Self.compress(source, ["clusters": "4", "residual-rank": "0"])
            let (full, compressed) = try Self.compress(source, ["clusters": "4", "residual-rank": "full"])
            let hf = try Self.exported(compressed, tag: "full")
            let u16 = 1.0 / 2048
            let plainTypes = plain.output.report.json["types"]!.arrayValue!, fullTypes = full.output.report.json["types"]!.arrayValue!
            for (p, f) in zip(plainTypes, fullTypes) {
                let type = MatrixType(name: p["type"]!.stringValue!)!
                let rank = Double(min(64, type.shape(source.config).dOut, type.shape(source.config).dIn))
                for (pl, fl) in zip(p["layers"]!.arrayValue!, f["layers"]!.arrayValue!) {
                    let residual = pl["relative_error"]!.doubleValue!, reproduced = fl["relative_error"]!.doubleValue!
                    let bound = 2 * u16 * rank.squareRoot() * residual + 1e-6
                    #expect(reproduced <= bound, "\(type): ‖W − Ŵ‖/‖W‖ \(reproduced) (bound \(bound), ‖E‖/‖W‖ \(residual))")
                }
            }
            // And what the report measures is what the export holds.
            let w = try source.float32(MatrixType.q.module(layer: 0) + ".weight"), got = try hf.float32(MatrixType.q.module(layer: 0) + ".weight")
            let first = fullTypes.first { $0["type"]?.stringValue == "q_proj" }!["layers"]!.arrayValue![0]["relative_error"]!.doubleValue!
            #expect(abs(Self.relativeError(got, w) - first) <= 1e-6 + 1e-3 * first)
        }

        /// The clustered layer (x·Cᵀ gathered by label, or x's columns summed per cluster, then
        /// ·C, plus the residual) computes what the dense export of its weights computes, on
        /// both channel choices and both backends.
        @Test(arguments: ClusteredLinear.Channels.allCases)
        func clusteredForwardEqualsDenseForward(_ channels: ClusteredLinear.Channels) throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 33))
            let (_, compressed) = try Self.compress(source, ["clusters": "6", "residual-rank": "8", "channels": channels.rawValue, "data-aware": "compensation"])
            let hf = try Self.exported(compressed, tag: "fwd-\(channels)")
            let dense = try logits(hf, Backends.cpu)
            // Two float32 computations of the same weights, one with k-term products and a
            // rank-8 product in place of each dense product: the forward path's bound.
            let bound = ForwardPath.logitsNMSEBetween(source.config, keys: F.evalTokens.count, rank: 96 + 2)
            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let clustered = try logits(compressed, be)
                #expect(F.nmse(clustered, dense) < bound, "\(be.kind) \(channels): nMSE \(F.nmse(clustered, dense)) (bound \(bound))")
            }
            #expect(compressed.manifest?.modules.values.allSatisfy { $0.kind == "clustered-\(channels.rawValue)" } == true)
        }

        /// Data-aware compensation minimises the calibration-weighted error, so it never loses to
        /// the plain SVD of E on it (same clusters: the same seed).
        @Test func dataAwareCompensationLowersTheWeightedError() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 34))
            let (plain, _) = try Self.compress(source, ["clusters": "4", "residual-rank": "8"])
            let (aware, _) = try Self.compress(source, ["clusters": "4", "residual-rank": "8", "data-aware": "compensation"])
            for (p, a) in zip(plain.output.report.json["types"]!.arrayValue!, aware.output.report.json["types"]!.arrayValue!) {
                for (pl, al) in zip(p["layers"]!.arrayValue!, a["layers"]!.arrayValue!) {
                    let (pe, ae) = (pl["weighted_error"]!.doubleValue!, al["weighted_error"]!.doubleValue!)
                    // Float16 factors: either may be off its optimum by their rounding.
                    #expect(ae <= pe * (1 + 1e-2) + 1e-6, "\(p["type"]!): data-aware \(ae) vs plain \(pe)")
                }
            }
        }

        /// The --bits rule spends at most the budget and reports its bits by the formula.
        @Test func bitsRuleFitsTheBudget() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 35))
            for bits in [2.0, 3.0, 4.0] {
                let method = try SWSCMethod(options: { var o = SWSCMethod.Options(); o.bits = bits; return o }(), config: source.config)
                for (t, choice) in method.choices {
                    let (dOut, dIn) = t.shape(source.config)
                    let got = SWSCMethod.averageBits(choice, dOut: dOut, dIn: dIn, channels: .rows)
                    #expect(got <= bits && choice.clusters >= 1, "\(t) at \(bits): \(choice) is \(got) bits")
                    // One more cluster would not fit in the cluster share.
                    if choice.clusters < dOut {
                        let centroidBits: Int = 16 * (choice.clusters + 1) * dIn
                        let labelBits: Int = dOut * SWSCMethod.labelBits(choice.clusters + 1)
                        let share: Double = bits / 2 * Double(dIn * dOut)
                        #expect(Double(centroidBits + labelBits) > share)
                    }
                }
            }
            #expect(SWSCMethod.labelBits(1) == 0 && SWSCMethod.labelBits(2) == 1 && SWSCMethod.labelBits(256) == 8 && SWSCMethod.labelBits(257) == 9)
        }

        /// NaN weights are refused by name, by SWSC and RTN alike.
        @Test func nanWeightsAreRefused() throws {
            let dir = try TinyModel.write(seed: 38)
            let file = try SafetensorsFile(path: dir + "/model.safetensors")
            let tensors = try file.tensorNames.map { (name) throws -> TensorToWrite in
                var v = try file.float32(name)
                if name == "model.layers.1.self_attn.k_proj.weight" { v[5] = .nan }
                return try TensorToWrite(name: name, shape: try file.info(name).shape, values: v)
            }
            try SafetensorsWriter.writeModel(tensors, to: dir)
            let source = try ModelFiles.open(dir)
            for (method, values) in [("swsc", ["clusters": ["4"]]), ("rtn", ["bits": ["4"]])] {
                let m = try MethodRegistry.standard.entry(method)!.make(MethodArguments(values: values), source.config)
                #expect { try Compressor.compress(files: source, backend: Backends.cpu, windows: F.windows, method: m) } throws: {
                    "\($0)".contains("model.layers.1.self_attn.k_proj.weight") && "\($0)".contains("non-finite")
                }
            }
        }

        /// Each impossible option is refused by name before any work.
        @Test func impossibleOptionsAreRefused() throws {
            let c = try ModelFiles.open(try TinyModel.write(seed: 36)).config
            let cases: [([String: String], String)] = [
                (["clusters": "0"], "--clusters 0 is outside 1...64"),
                (["clusters": "97", "matrices": "down"], "--clusters 97 is outside 1...64"),
                (["clusters": "4", "residual-rank": "-1"], "--residual-rank -1"),
                (["clusters": "4", "residual-rank": "65"], "--residual-rank 65 is outside 0...64"),
                (["bits": "0.01"], "--bits 0.01 cannot hold one"),
                (["bits": "3", "clusters": "4"], "either --bits"),
                ([:], "needs --clusters"),
                (["clusters": "4", "channels": "cols", "data-aware": "both"], "weighs input dimensions"),
            ]
            for (values, expected) in cases {
                let a = MethodArguments(values: values.mapValues { [$0] })
                #expect { try MethodRegistry.standard.entry("swsc")!.make(a, c) } throws: { "\($0)".contains(expected) }
            }
            let bad = MethodArguments(values: ["matrices": ["q,nope"]])
            #expect { try MethodRegistry.standard.entry("swsc")!.make(bad, c) } throws: { "\($0)".contains("'nope' is not a linear layer") }
            #expect { try MethodRegistry.standard.entry("rtn")!.make(MethodArguments(values: ["bits": ["1"]]), c) } throws: { "\($0)".contains("--bits must be 2 to 8") }
        }
    }

    @Suite struct RTN {
        typealias F = CompressFixture

        /// Codes pack and unpack for every width, on rows that are not a whole number of bytes
        /// or groups; each weight is within half a step of its original, plus the step's rounding.
        @Test func quantisationRoundTrips() throws {
            let w = Matrix<Float>.random(rows: 5, cols: 37, seed: 6)
            for bits in 2...8 {
                for group in [37, 8, 5] {
                    let q = RoundToNearest.quantize(w, bits: bits, group: group)
                    #expect(q.codes.cols == (37 * bits + 7) / 8 && q.steps.cols == (37 + group - 1) / group)
                    let back = RoundToNearest.dequantize(
                        codes: q.codes.values, minima: q.minima.values, steps: q.steps.values, dOut: 5, dIn: 37, bits: bits, group: group)
                    for o in 0..<5 {
                        for i in 0..<37 {
                            let step = q.steps[o, i / group]
                            // Half a step, and the Float16 minimum and step: the largest code times
                            // the step's rounding (u₁₆ relative) plus the minimum's.
                            let bound = step / 2 + Float((1 << bits) - 1) * step / 2048 + abs(q.minima[o, i / group]) / 2048 + 1e-6
                            #expect(abs(back[o * 37 + i] - w[o, i]) <= bound, "bits \(bits) group \(group) (\(o), \(i))")
                        }
                    }
                }
            }
            #expect(RoundToNearest.averageBits(dOut: 4, dIn: 64, bits: 4, group: 64) == 4.5)
        }

        /// The checkpoint's quantised modules run and export as the dequantised weights.
        @Test func checkpointLoadsAndExports() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 37))
            let (r, compressed) = try SWSC.compress(source, ["method": "rtn", "bits": "4", "group-size": "16", "matrices": "q,k,down"])
            #expect(compressed.manifest?.modules.count == 2 * 3)
            // Dense modules whose weights are quantised tensors: parameters count parameters.
            let m = try #require(compressed.manifest)
            #expect(m.modules.values.allSatisfy { $0.kind == "dense" } && m.storedLinearParameters == m.denseLinearParameters)
            #expect(m.modules.keys.allSatisfy { m.quantizedTensors?[$0 + ".weight"].map { ($0.bits, $0.group) } ?? (0, 0) == (4, 16) })
            #expect(r.output.report.json["average_bits"]?.doubleValue == 4 + 32.0 / 16)
            let hf = try SWSC.exported(compressed, tag: "rtn")
            let a = try LlamaModel(files: compressed, backend: Backends.cpu).logits(F.evalTokens).values
            let b = try LlamaModel(files: hf, backend: Backends.cpu).logits(F.evalTokens).values
            #expect(a == b, "the quantised model runs its dequantised weights densely, as the export stores them")

            // The same checkpoint as format 2 wrote it (kind "quantized", its own codes, minima and
            // steps, no table) loads to the same logits.
            let old = try Self.asFormatTwo(compressed.path)
            defer { try? FileManager.default.removeItem(atPath: old) }
            let oldFiles = try ModelFiles.open(old)
            #expect(oldFiles.manifest?.modules.values.allSatisfy { $0.kind == "quantized" } == true)
            #expect(try LlamaModel(files: oldFiles, backend: Backends.cpu).logits(F.evalTokens).values == a)

            // A manifest naming one tensor in two roles is refused (it used to trap counting them).
            let path = old + "/sheaf.json"
            var manifest = try CompressedManifest.load(path)
            let module = MatrixType.q.module(layer: 0)
            manifest.modules[module]!.tensors["steps"] = manifest.modules[module]!.tensors["minima"]
            try manifest.encoded().write(to: URL(fileURLWithPath: path))
            #expect { try LlamaModel(files: try ModelFiles.open(old), backend: Backends.cpu) } throws: {
                "\($0)".contains("names one tensor in two roles")
            }
        }

        /// An RTN checkpoint of format 3 rewritten as format 2 had it: each dense module with a
        /// quantised weight becomes kind "quantized" naming `module.codes`, `.minima`, `.steps`.
        static func asFormatTwo(_ dir: String) throws -> String {
            let out = dir + "-format2"
            try? FileManager.default.removeItem(atPath: out)
            try FileManager.default.copyItem(atPath: dir, toPath: out)
            var manifest = try CompressedManifest.load(dir + "/sheaf.json")
            let table = manifest.quantizedTensors ?? [:]
            var renamed: [String: String] = [:]
            for (module, entry) in manifest.modules {
                let q = try #require(table[entry.tensors["weight"]!])
                let names = ["codes": module + ".codes", "minima": module + ".minima", "steps": module + ".steps"]
                (renamed[q.codes], renamed[q.minima], renamed[q.steps]) = (names["codes"], names["minima"], names["steps"])
                manifest.modules[module] = .init(kind: "quantized", tensors: names, attributes: ["bits": q.bits, "group": q.group])
            }
            manifest.quantizedTensors = nil
            manifest.formatVersion = 2
            let file = try SafetensorsFile(path: dir + "/model.safetensors")
            try FileManager.default.removeItem(atPath: out + "/model.safetensors")
            try SafetensorsWriter.writeModel(
                try file.tensorNames.map { name in
                    try TensorToWrite(name: renamed[name] ?? name, shape: try file.info(name).shape, dtype: try file.dtype(name), bytes: try file.rawBytes(name))
                }, to: out)
            try manifest.encoded().write(to: URL(fileURLWithPath: out + "/sheaf.json"))
            return out
        }
    }
}

extension BackendSuites {
    /// RTN at 8 bits on SmolLM2-135M barely moves perplexity: under 0.5% on a reduced Protocol S
    /// (the first window of 1024 tokens; BENCHMARKS.md has the full protocol's figure). The
    /// Grams RTN collects only weigh its report, so one short calibration window is enough.
    @Suite struct RTNRealModel {
        @Test func eightBitsKeepsPerplexity() throws {
            try RealFixtures.require(RealFixtures.modelPath)
            try RealFixtures.require(RealFixtures.wikiPath)
            let source = try ModelFiles.open(RealFixtures.modelPath)
            let method = try RTNMethod(options: { var o = RTNMethod.Options(); o.bits = 8; return o }(), config: source.config)
            let r = try Compressor.compress(files: source, backend: Backends.cpu, windows: [Array(1...32).map { Int32($0) }], method: method)
            let compressed = try CompressFixture.write(r, source: source, tag: "rtn8-real")
            let text = try String(contentsOfFile: RealFixtures.wikiPath, encoding: .utf8)
            let windows = try Perplexity.windows(source.tokenizer().encode(text), context: 1024, count: 1)
            let dense = try Perplexity.evaluate(try LlamaModel(files: source, backend: Backends.cpu), windows: windows).perplexity
            let quantised = try Perplexity.evaluate(try LlamaModel(files: compressed, backend: Backends.cpu), windows: windows).perplexity
            #expect(abs(quantised / dense - 1) < 0.005, "8-bit RTN \(quantised) vs dense \(dense)")
        }
    }
}
