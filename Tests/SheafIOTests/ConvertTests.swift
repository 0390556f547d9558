import Foundation
import SheafCore
import SheafIO
import Testing

/// The reference model from scripts/fixtures; a missing file fails the test with directions.
enum ReferenceModel {
    static var path: String {
        let cache = ProcessInfo.processInfo.environment["SHEAF_CACHE"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() + "/.cache/sheaf")
        return cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    }

    static func open() throws -> ModelFiles {
        guard FileManager.default.fileExists(atPath: path) else {
            Issue.record("reference model missing at \(path): run scripts/fixtures")
            throw SheafError.io(path: path, detail: "missing")
        }
        return try ModelFiles.open(path)
    }
}

/// sha256 of float32 values as little-endian bytes.
func floatDigest(_ values: [Float]) -> String {
    values.withUnsafeBytes { SHA256.hex($0) }
}

/// `sheaf convert --dtype f32` of the SmolLM2 GGUF against an independent dequantisation
/// (scripts/convert_golden.py: the Python `gguf` package and numpy, Q/K un-permuted in numpy).
@Suite struct ConvertTests {
    /// (HF name, shape, sha256 of the float32 bytes) printed by scripts/convert_golden.py.
    static let golden: [(String, [Int], String)] = [
        ("model.embed_tokens.weight", [49152, 576], "3fd491c8066dd9dc1a2bf6796701526c82817d95c0ecabacdef3013c2b8bbbaa"),
        ("model.layers.0.self_attn.q_proj.weight", [576, 576], "54b377bbfa2deab945dfdba7fb59e0ca3eb74329358bd1b53b635b3ff37c1a56"),
        ("model.layers.0.self_attn.k_proj.weight", [192, 576], "814d239237d0643a10d9468d42e617b687ef032f85ad617389de27cf27f6fd34"),
        ("model.layers.29.mlp.down_proj.weight", [576, 1536], "c19605745425a11e704e305ce3d27b632c406195d39eb3377e9cfb140ac643d1"),
        ("model.norm.weight", [576], "3b87f8e27335e67fc08f159cabfd2d18f205d6c5b225a6f978153552bf01d559"),
    ]
    /// sha256 over the per-tensor digests (as bytes) of all 272 tensors in sorted name order.
    static let allTensors = "32bb16124f33ee7d3da01faefc440691f22a0bd1f06305b07aab4cd98bd0e3fc"

    static func digestOfAll(_ model: ModelFiles) throws -> String {
        var total = SHA256()
        for name in model.tensorNames {
            let hex = floatDigest(try model.float32(name))
            var bytes: [UInt8] = []
            var i = hex.startIndex
            while i < hex.endIndex {
                let j = hex.index(i, offsetBy: 2)
                bytes.append(UInt8(hex[i..<j], radix: 16)!)
                i = j
            }
            bytes.withUnsafeBytes { total.update($0) }
        }
        return total.finalize().map { String(format: "%02x", $0) }.joined()
    }

    @Test func ggufConfigMatchesTheModelCard() throws {
        let c = try ReferenceModel.open().config
        #expect(c.architecture == "llama" && c.layerCount == 30 && c.hiddenSize == 576 && c.intermediateSize == 1536)
        #expect(c.headCount == 9 && c.kvHeadCount == 3 && c.headDim == 64 && c.vocabularySize == 49152)
        #expect(c.ropeTheta == 100_000 && abs(c.rmsNormEps - 1e-5) < 1e-12 && c.tiedEmbeddings)
    }

    @Test func convertedF32EqualsTheIndependentDequantisation() throws {
        let gguf = try ReferenceModel.open()
        let dir = try temporaryFolder("convert")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/hf"
        try HFExport.write(gguf, to: out, dtype: .F32)
        let hf = try ModelFiles.open(out)
        #expect(hf.format == .safetensors && hf.config == gguf.config)
        #expect(hf.tensorNames.count == 272 && hf.tensorNames == gguf.tensorNames)
        for (name, shape, sha) in Self.golden {
            #expect(try hf.info(name).shape == shape && hf.info(name).type == "F32")
            #expect(floatDigest(try hf.float32(name)) == sha, "\(name)")
        }
        #expect(try Self.digestOfAll(hf) == Self.allTensors)
        for file in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
            #expect(FileManager.default.fileExists(atPath: out + "/" + file), "\(file)")
        }
        // The folder's tokenizer.json encodes like the GGUF's own tokenizer.
        let text = "The 2 quick brown foxes   jumped over 1,234 lazy dogs.\n\nÉté — naïve café 😀"
        #expect(try hf.tokenizer().encode(text) == gguf.tokenizer().encode(text))
        // Refuses to overwrite, and leaves no partial folder behind.
        #expect(throws: SheafError.self) { try HFExport.write(gguf, to: out) }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains("partial") }
        #expect(leftovers.isEmpty)
    }
}
