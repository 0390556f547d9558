import Foundation
import SheafBackend
import SheafCore
import SheafEval
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

extension BackendSuites {
    /// Dense SmolLM2-135M under a reduced Protocol S: the first 2 windows of 1024 tokens of
    /// WikiText-2 test. HuggingFace transformers 5.23.0 / torch 2.15.0, float32, sdpa, on the
    /// folder `sheaf convert` writes, gives perplexity 20.100606 (mean NLL 3.000750 over 2046
    /// predictions): scripts/hf_reference_ppl.py HF_DIR wiki.test.raw 1024 2. The full
    /// Protocol S figure (21.6685 in BENCHMARK.md) is in BENCHMARKS.md.
    @Suite struct RealModel {
        static let transformersPerplexity = 20.100606

        /// The GGUF's Q8_0 and Q4_1 matrices stay as their blocks in memory (as codec codes, groups
        /// of 32): each expands, llama Q/K rows un-permuted, to exactly the values ggml's
        /// dequantisation gives, and the model holds every linear layer and the tied head so.
        @Test func ggufBlocksStayQuantisedAndExpandExactly() throws {
            try RealFixtures.require(RealFixtures.modelPath)
            let files = try ModelFiles.open(RealFixtures.modelPath)
            var converted = 0
            for name in files.tensorNames where try files.info(name).shape.count == 2 {
                guard let (q, codes, minima, steps) = try files.quantized(name) else { continue }
                let got = RoundToNearest.dequantize(
                    codes: codes.map(Float.init), minima: minima, steps: steps, dOut: q.shape[0], dIn: q.shape[1], bits: q.bits, group: q.group)
                let (want, type) = (try files.float32(name), try files.info(name).type)
                #expect(got.elementsEqual(want) { $0.bitPattern == $1.bitPattern }, "\(name) (\(type))")
                converted += 1
            }
            #expect(converted == 30 * 7 + 1, "every linear weight and the embedding: \(converted)")
            let model = try LlamaModel(files: files, backend: Backends.cpu)
            for layer in model.layers {
                for t in MatrixType.allCases { #expect((layer[t] as? DenseLinear)?.weightT.storedScalar == .uint8, "\(t)") }
            }
        }

        @Test func perplexityMatchesTransformersOnBothBackends() throws {
            try RealFixtures.require(RealFixtures.modelPath)
            try RealFixtures.require(RealFixtures.wikiPath)
            let files = try ModelFiles.open(RealFixtures.modelPath)
            let text = try String(contentsOfFile: RealFixtures.wikiPath, encoding: .utf8)
            let windows = try Perplexity.windows(files.tokenizer().encode(text), context: 1024, count: 2)
            // Statistical bound (ForwardPath.realPerplexityRelative): transformers and each backend
            // are two float32 computations of the same 30 layers over 2 × 1023 predictions.
            let bound = ForwardPath.realPerplexityRelative(
                files.config, keys: 1024, predictions: 2046, logitRMS: try RealFixtures.logitRMS(files))
            var results: [Double] = []
            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let r = try Perplexity.evaluate(try LlamaModel(files: files, backend: be), windows: windows)
                #expect(r.predictions == 2046)
                #expect(abs(r.perplexity / Self.transformersPerplexity - 1) < bound, "\(be.kind): \(r.perplexity) (bound \(bound))")
                results.append(r.perplexity)
            }
            #expect(abs(results[0] / results[1] - 1) < bound, "cpu \(results[0]) vs opencl \(results[1]) (bound \(bound))")
        }
    }
}
