import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

extension BackendSuites {
    /// DirectShare and PostShare (arXiv 2402.11819) on tiny random models: 4 query heads on 2
    /// key/value groups of 16, so a kv-group unit is 2 query heads' q rows and o columns with one
    /// k and one v head.
    @Suite struct HeadSharing {
        typealias F = CompressFixture

        static func compress(
            _ source: ModelFiles, method: String = "directshare", rate: Double, unit: String = "kv-group", signature: String = "qk",
            backend: any Backend = Backends.cpu
        ) throws -> (CompressionResult, ModelFiles) {
            let a = MethodArguments(values: ["share-rate": ["\(rate)"], "unit": [unit], "signature": [signature]])
            let m = try MethodRegistry.standard.entry(method)!.make(a, source.config)
            let r = try Compressor.compress(files: source, backend: backend, windows: F.windows, method: m)
            return (r, try F.write(r, source: source, tag: "\(method)-\(rate)-\(unit)-\(signature)-\(source.config.layerCount)"))
        }

        static func exported(_ files: ModelFiles, tag: String) throws -> ModelFiles {
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-heads-export-\(getpid())-\(tag)").path
            try CompressedCheckpoint.exportDense(files, to: out, replace: true)
            return try ModelFiles.open(out)
        }

        /// (replaced unit, its reference) pairs from the report.
        static func pairs(_ r: CompressionResult) -> [(unit: (Int, Int), reference: (Int, Int))] {
            r.output.report.json["units"]!.arrayValue!.compactMap { u in
                guard u["replaced"]?.boolValue == true, let ref = u["reference"] else { return nil }
                return ((u["layer"]!.intValue!, u["index"]!.intValue!), (ref["layer"]!.intValue!, ref["index"]!.intValue!))
            }
        }

        /// Which heads of `type` a unit covers (the method's rule, restated).
        static func heads(_ type: MatrixType, unit: String, index: Int, _ c: ModelConfig) -> Range<Int> {
            let perGroup = c.headCount / c.kvHeadCount
            switch (unit, type) {
            case ("kv-group", .q), ("kv-group", .o): return index * perGroup..<(index + 1) * perGroup
            case ("kv-group", _): return index..<index + 1
            case (_, .q), (_, .o): return index..<index + 1
            default: return 0..<0
            }
        }

        /// The rows (q, k, v) or columns (o) of head `h` of a (dOut, dIn) weight.
        static func head(_ w: [Float], _ type: MatrixType, _ h: Int, _ c: ModelConfig) -> [Float] {
            let (dOut, dIn) = type.shape(c), hd = c.headDim
            if type == .o { return (0..<dOut).flatMap { o in (0..<hd).map { w[o * dIn + h * hd + $0] } } }
            return Array(w[h * hd * dIn..<(h + 1) * hd * dIn])
        }

        /// Share rate 0 replaces nothing: no module changes and the model computes exactly what
        /// the dense one does.
        @Test func shareRateZeroIsTheDenseModel() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 41, layers: 3))
            for method in ["directshare", "postshare"] {
                let (r, compressed) = try Self.compress(source, method: method, rate: 0)
                #expect(r.output.modules.isEmpty && r.output.tensors.isEmpty)
                #expect(compressed.manifest?.achievedRatio == 0)
                let dense = try LlamaModel(files: source, backend: Backends.cpu).logits(F.evalTokens).values
                #expect(try LlamaModel(files: compressed, backend: Backends.cpu).logits(F.evalTokens).values == dense)
            }
        }

        /// DirectShare's export: a replaced head's q, k, v rows and o columns are its reference
        /// head's, every other head is as it was; the stored parameters drop by exactly the
        /// replaced units' (nothing is stored twice).
        @Test(arguments: ["kv-group", "query-head"])
        func directShareCopiesTheReference(_ unit: String) throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 42, layers: 4))
            let c = source.config
            let (r, compressed) = try Self.compress(source, rate: 0.5, unit: unit)
            let pairs = Self.pairs(r)
            let perLayer = unit == "kv-group" ? c.kvHeadCount : c.headCount
            #expect(pairs.count == 4 * perLayer / 2, "\(pairs.count) replaced")
            // A reference is never itself replaced, and layer 0 never is.
            let replaced = Set(pairs.map { [$0.unit.0, $0.unit.1] })
            #expect(pairs.allSatisfy { !replaced.contains([$0.reference.0, $0.reference.1]) && $0.unit.0 >= 1 && $0.reference.0 < $0.unit.0 })
            let hf = try Self.exported(compressed, tag: "direct-\(unit)")
            for layer in 0..<c.layerCount {
                for t in [MatrixType.q, .k, .v, .o] {
                    let got = try hf.float32(t.module(layer: layer) + ".weight")
                    for h in 0..<t.headSlices(c)!.count {
                        // The head this one reads: its own, or the same position in the reference unit.
                        var from = (layer, h)
                        for p in pairs where p.unit.0 == layer && Self.heads(t, unit: unit, index: p.unit.1, c).contains(h) {
                            from = (p.reference.0, Self.heads(t, unit: unit, index: p.reference.1, c).lowerBound + h - Self.heads(t, unit: unit, index: p.unit.1, c).lowerBound)
                        }
                        let want = Self.head(try source.float32(t.module(layer: from.0) + ".weight"), t, from.1, c)
                        let same = Self.head(got, t, h, c) == want
                        #expect(same, "\(t) layer \(layer) head \(h) should read layer \(from.0) head \(from.1)")
                    }
                }
            }
            let saved = r.output.report.json["parameters_saved"]!.intValue!
            #expect(saved == pairs.count * r.output.report.json["unit_parameters"]!.intValue!)
            #expect(compressed.manifest!.storedLinearParameters == c.linearParameterCount - saved)
        }

        /// The head-shared layer computes from views of the lenders' uploaded weights (one buffer
        /// per stored tensor, shared by every module that reads it) and its forward equals the
        /// dense forward of its export on both backends.
        @Test(arguments: ["kv-group", "query-head"])
        func headSharedForwardEqualsDenseForward(_ unit: String) throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 43, layers: 3))
            let (_, compressed) = try Self.compress(source, method: "postshare", rate: 0.5, unit: unit)
            let hf = try Self.exported(compressed, tag: "forward-\(unit)")
            let dense = try LlamaModel(files: hf, backend: Backends.cpu).logits(F.evalTokens).values
            // The same weights, o's sum split into head runs: the forward path's float32 bound.
            let bound = ForwardPath.logitsNMSEBetween(source.config, keys: F.evalTokens.count)
            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let model = try LlamaModel(files: compressed, backend: be)
                let got = try model.logits(F.evalTokens).values
                #expect(F.nmse(got, dense) < bound, "\(be.kind) \(unit): nMSE \(F.nmse(got, dense)) (bound \(bound))")
                var buffers: [String: DeviceBuffer] = [:]
                var shared = 0
                for layer in model.layers {
                    for l in [layer.q, layer.k, layer.v, layer.o] {
                        guard let h = l as? HeadSharedLinear else { continue }
                        shared += 1
                        for (name, b) in h.sourceBuffers {
                            if let seen = buffers[name] { #expect(seen === b, "\(name) uploaded twice") } else { buffers[name] = b }
                        }
                    }
                }
                #expect(shared > 0)
                // Every uploaded buffer holds exactly its stored tensor: no per-head copies.
                let stored = try buffers.keys.reduce(0) { $0 + (try compressed.info($1).shape.reduce(1, *)) }
                #expect(buffers.values.reduce(0) { $0 + $1.count } == stored)
            }
        }

        /// PostShare fits each shared copy to every head it serves, so its calibration-weighted
        /// error is never above DirectShare's copy of the reference for the same pairs.
        @Test(arguments: ["kv-group", "query-head"])
        func postShareLowersTheWeightedError(_ unit: String) throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 44, layers: 4))
            let (post, postFiles) = try Self.compress(source, method: "postshare", rate: 0.5, unit: unit)
            let (direct, _) = try Self.compress(source, method: "directshare", rate: 0.5, unit: unit)
            #expect(Self.pairs(post).map { "\($0)" } == Self.pairs(direct).map { "\($0)" }, "the same pairs")
            let fits = post.output.report.json["fits"]!.arrayValue!
            #expect(!fits.isEmpty)
            for f in fits {
                for part in ["rows", "columns"] {
                    let (d, p) = (f[part + "_error_direct"]!.doubleValue!, f[part + "_error_fitted"]!.doubleValue!)
                    #expect(p <= d * (1 + 1e-9) && d > 0, "\(part) of \(f["reference"]!): fitted \(p) vs direct \(d)")
                }
            }
            // The export: a replaced head reads the same fitted copy as its reference, which is
            // no longer the reference's original weights.
            let c = source.config
            let hf = try Self.exported(postFiles, tag: "post-\(unit)")
            for p in Self.pairs(post) {
                for t in [MatrixType.q, .k, .v, .o] {
                    let (mine, theirs) = (Self.heads(t, unit: unit, index: p.unit.1, c), Self.heads(t, unit: unit, index: p.reference.1, c))
                    for (h, r) in zip(mine, theirs) {
                        let got = Self.head(try hf.float32(t.module(layer: p.unit.0) + ".weight"), t, h, c)
                        let copy = Self.head(try hf.float32(t.module(layer: p.reference.0) + ".weight"), t, r, c)
                        let original = Self.head(try source.float32(t.module(layer: p.reference.0) + ".weight"), t, r, c)
                        let (same, fitted) = (got == copy, copy != original)
                        #expect(same && fitted, "\(t) layer \(p.unit.0) head \(h): reads its reference's copy \(same), fitted \(fitted)")
                    }
                }
            }
            let json = post.output.report.json
            #expect(json["rows_error_fitted"]!.doubleValue! < json["rows_error_direct"]!.doubleValue!)
            #expect(json["columns_error_fitted"]!.doubleValue! < json["columns_error_direct"]!.doubleValue!)
        }

        /// The picture is written into the checkpoint and is an SVG with the layers and the marks.
        @Test func heatMapIsWritten() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 45, layers: 3))
            let (r, compressed) = try Self.compress(source, rate: 0.25)
            let svg = try String(contentsOfFile: compressed.path + "/" + HeadSharingMethod.pictureName, encoding: .utf8)
            #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
            #expect(svg.contains("layer") && svg.contains("key/value group index") && svg.contains("cosine similarity (unitless)"))
            #expect(svg.components(separatedBy: "<path").count - 1 == 2 * Self.pairs(r).count + 1, "one cross per replaced unit, plus the legend's")
        }

        /// Options and models head sharing cannot take: one clear refusal each.
        @Test func refusals() throws {
            let c = try ModelFiles.open(try TinyModel.write(seed: 46)).config
            func refused(_ rate: Double, _ config: ModelConfig, _ expected: String) {
                var o = HeadSharingMethod.Options()
                o.shareRate = rate
                do {
                    _ = try HeadSharingMethod(options: o, config: config)
                    Issue.record("accepted \(rate) on \(config.layerCount) layers")
                } catch { #expect(error.description.contains(expected), "\(error.description)") }
            }
            refused(1, c, "--share-rate must be in [0, 1), got 1.0")
            refused(-0.1, c, "--share-rate must be in [0, 1)")
            refused(.nan, c, "--share-rate must be in [0, 1)")
            var one = c
            one.layerCount = 1
            refused(0.1, one, "needs an earlier layer")
            let odd = try ModelConfig(
                architecture: "llama", hiddenSize: 64, intermediateSize: 96, layerCount: 2, headCount: 6, kvHeadCount: 2, headDim: 16,
                vocabularySize: 101, ropeTheta: 10_000, rmsNormEps: 1e-5, maxPositions: 512, tiedEmbeddings: false, attentionBias: false)
            refused(0.1, odd, "num_attention_heads 6 does not divide hidden_size 64")
            for (name, value, expected) in [("signature", "qo", "--signature must be one of q, k, v, qk, qkv"), ("unit", "head", "--unit must be one of kv-group, query-head")] {
                #expect(throws: MethodOptionError.self) { try MethodRegistry.standard.entry("directshare")!.make(MethodArguments(values: [name: [value]]), c) }
                do { _ = try MethodRegistry.standard.entry("postshare")!.make(MethodArguments(values: [name: [value]]), c) } catch {
                    #expect("\(error)".contains(expected), "\(error)")
                }
            }
        }
    }
}
