import Foundation
import SheafCore
import SheafIO
import Testing

/// A fresh temporary folder, removed by the caller.
func temporaryFolder(_ tag: String) throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite struct SafetensorsTests {
    static func sampleTensors() throws -> [TensorToWrite] {
        let a = Matrix<Float>.random(rows: 3, cols: 5, seed: 1).values
        return [
            try TensorToWrite(name: "layers.0.weight", shape: [3, 5], values: a, as: .F32),
            try TensorToWrite(name: "layers.0.half", shape: [3, 5], values: a, as: .F16),
            try TensorToWrite(name: "layers.0.brain", shape: [5, 3], values: a, as: .BF16),
            try TensorToWrite(name: "ids", shape: [4], dtype: .I32, bytes: [1, 0, 0, 0, 2, 0, 0, 0, 255, 255, 255, 255, 7, 0, 0, 0]),
            try TensorToWrite(name: "mask", shape: [2, 2], dtype: .U8, bytes: [0, 1, 1, 0]),
            try TensorToWrite(name: "scalar", shape: [], values: [42], as: .F32),
        ]
    }

    @Test func roundTripIsBitIdentical() throws {
        let dir = try temporaryFolder("st")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tensors = try Self.sampleTensors()
        let path = dir + "/a.safetensors"
        try SafetensorsWriter.write(tensors, metadata: ["format": "pt", "note": "quote \" and \\ and ünïcode"], to: path)
        let file = try SafetensorsFile(path: path)
        #expect(file.metadata["note"] == "quote \" and \\ and ünïcode")
        #expect(file.tensorNames == tensors.map(\.name).sorted())
        for t in tensors {
            #expect(try file.info(t.name) == TensorInfo(name: t.name, shape: t.shape, type: t.dtype.rawValue, byteCount: t.byteCount))
            #expect(try file.rawBytes(t.name) == t.storedBytes())
        }
        let original = Matrix<Float>.random(rows: 3, cols: 5, seed: 1).values
        #expect(try file.float32("layers.0.weight") == original)
        #expect(try file.float32("scalar") == [42])
        // f16 and bf16 keep 11 and 8 significant bits: round to nearest is within 2⁻¹¹ and 2⁻⁸
        // relative; below f16's normal range (6.1e-5) its spacing is 2⁻²⁴ absolute, half of that.
        for (name, bound) in [("layers.0.half", 1.0 / 2048), ("layers.0.brain", 1.0 / 256)] {
            let got = try file.float32(name)
            for (g, o) in zip(got, original) { #expect(abs(Double(g - o)) <= bound * Double(abs(o)) + 0x1p-25) }
        }
        // Read -> write -> read: identical bytes, identical file.
        let again = try file.tensorNames.map { name in
            try TensorToWrite(name: name, shape: try file.info(name).shape, dtype: try file.dtype(name), bytes: try file.rawBytes(name))
        }
        try SafetensorsWriter.write(again, metadata: file.metadata, to: dir + "/b.safetensors")
        #expect(FileManager.default.contents(atPath: path) == FileManager.default.contents(atPath: dir + "/b.safetensors"))
        #expect(throws: SheafError.self) { try file.float32("ids") }
        #expect(throws: SheafError.self) { try file.info("nope") }
        // Header padded to 8 bytes.
        let bytes = FileManager.default.contents(atPath: path)!
        let headerLength = bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        #expect(headerLength % 8 == 0)
        #expect(!FileManager.default.fileExists(atPath: dir + "/.a.safetensors.partial-\(getpid())"))
    }

    @Test func shardedCheckpointsThroughTheIndex() throws {
        let dir = try temporaryFolder("shard")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tensors = try Self.sampleTensors()
        let files = try SafetensorsWriter.writeModel(tensors, to: dir, shardBytes: 64)
        #expect(files.last == "model.safetensors.index.json" && files.count > 2)
        let store = try ShardedSafetensors(indexPath: dir + "/model.safetensors.index.json")
        #expect(store.tensorNames == tensors.map(\.name).sorted())
        for t in tensors { #expect(try store.rawBytes(t.name) == t.storedBytes()) }

        // An index naming a tensor its shard lacks, or a shard that does not exist.
        let index = dir + "/model.safetensors.index.json"
        var object = try JSONSerialization.jsonObject(with: FileManager.default.contents(atPath: index)!) as! [String: Any]
        var map = object["weight_map"] as! [String: String]
        map["ghost.weight"] = files[0]
        object["weight_map"] = map
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: index))
        #expect { try ShardedSafetensors(indexPath: index) } throws: { "\($0)".contains("ghost.weight") }
        map["ghost.weight"] = "model-00099-of-00099.safetensors"
        object["weight_map"] = map
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: index))
        #expect { try ShardedSafetensors(indexPath: index) } throws: { "\($0)".contains("does not exist") }

        // A tensor in two shards: the index names one, the other copy would be silently ignored.
        map.removeValue(forKey: "ghost.weight")
        let second = files[1]
        let movedName = map.first { $0.value == files[0] }!.key
        object["weight_map"] = map
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: index))
        let shard = try SafetensorsFile(path: dir + "/" + second)
        var extra = try shard.tensorNames.map { name in
            try TensorToWrite(name: name, shape: shard.info(name).shape, dtype: SafetensorsDType(rawValue: shard.info(name).type)!, bytes: shard.rawBytes(name))
        }
        extra.append(tensors.first { $0.name == movedName }!)
        try SafetensorsWriter.write(extra, to: dir + "/" + second)
        #expect { try ShardedSafetensors(indexPath: index) } throws: { "\($0)".contains("tensor '\(movedName)' is in shard '\(second)'") }

        // An index repeating a tensor's key.
        let repeated = #"{"weight_map": {"ids": "\#(files[0])", "ids": "\#(second)"}}"#
        try Data(repeated.utf8).write(to: URL(fileURLWithPath: index))
        #expect { try ShardedSafetensors(indexPath: index) } throws: { "\($0)".contains("duplicate key 'ids'") }
    }

    /// Deferred tensors are produced once each, when the writer reaches them, and give the same
    /// file as the same values given up front; a producer that fails or returns the wrong count
    /// leaves no file behind.
    @Test func deferredTensorsStreamAndFailCleanly() throws {
        let dir = try temporaryFolder("deferred")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        final class Calls: @unchecked Sendable { var names: [String] = [] }
        let calls = Calls()
        let a = Matrix<Float>.random(rows: 3, cols: 5, seed: 1).values
        let deferred = try ["b.weight", "a.weight"].map { name in
            try TensorToWrite(name: name, shape: [3, 5], as: .F16) { calls.names.append(name); return a }
        }
        #expect(calls.names.isEmpty, "nothing is produced before the write")
        try SafetensorsWriter.write(deferred, to: dir + "/deferred.safetensors")
        #expect(calls.names == ["a.weight", "b.weight"], "once each, in file order")
        let eager = try ["b.weight", "a.weight"].map { try TensorToWrite(name: $0, shape: [3, 5], values: a, as: .F16) }
        try SafetensorsWriter.write(eager, to: dir + "/eager.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/deferred.safetensors") == FileManager.default.contents(atPath: dir + "/eager.safetensors"))

        let failing = try TensorToWrite(name: "bad", shape: [2]) { () throws(SheafError) in
            throw .io(path: "source.gguf", detail: "truncated")
        }
        let short = try TensorToWrite(name: "short", shape: [4]) { [1, 2, 3] }
        for t in [failing, short] {
            #expect(throws: SheafError.self) { try SafetensorsWriter.write(eager + [t], to: dir + "/broken.safetensors") }
            let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains("broken") }
            #expect(left.isEmpty, "a failed write leaves nothing: \(left)")
        }
    }

    /// A file with `header` as its JSON and `dataBytes` zero bytes of data.
    func file(header: String, dataBytes: Int, in dir: String, lengthOverride: UInt64? = nil) throws -> String {
        var data = Data()
        let h = Array(header.utf8)
        withUnsafeBytes(of: (lengthOverride ?? UInt64(h.count)).littleEndian) { data.append(contentsOf: $0) }
        data.append(contentsOf: h)
        data.append(Data(count: dataBytes))
        let path = dir + "/bad-\(UInt32.random(in: 0...UInt32.max)).safetensors"
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func badFilesGetOneClearError() throws {
        let dir = try temporaryFolder("bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ok = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let cases: [(String, String)] = [
            (try file(header: ok, dataBytes: 8, in: dir, lengthOverride: 1 << 40), "exceeds"),
            (try file(header: ok, dataBytes: 8, in: dir, lengthOverride: 1000), "past the end"),
            (try file(header: "{not json", dataBytes: 0, in: dir), "not valid JSON"),
            (try file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, dataBytes: 4, in: dir), "outside"),
            (try file(header: #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, dataBytes: 8, in: dir), "does not match"),
            (try file(header: #"{"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}"#, dataBytes: 8, in: dir), "shape"),
            (try file(header: #"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, dataBytes: 8, in: dir), "unknown dtype 'Q9'"),
            (try file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, dataBytes: 12, in: dir), "overlap"),
            (try file(header: #"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#, dataBytes: 8, in: dir), "does not match"),
            (try file(header: "[1,2]", dataBytes: 0, in: dir), "not an object"),
            // JSONSerialization keeps the last of a repeated key: the first tensor would vanish unseen.
            (try file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, dataBytes: 8, in: dir), "duplicate key 'a'"),
        ]
        for (path, expected) in cases {
            #expect { try SafetensorsFile(path: path) } throws: { error in
                let text = "\(error)"
                return text.contains(expected) && text.contains(path) && !text.contains("\n")
            }
        }
        let invalidUTF8 = dir + "/utf8.safetensors"
        var data = Data()
        withUnsafeBytes(of: UInt64(8).littleEndian) { data.append(contentsOf: $0) }
        data.append(contentsOf: [0x7B, 0xFF, 0xFE, 0x7D, 0x20, 0x20, 0x20, 0x20])
        try data.write(to: URL(fileURLWithPath: invalidUTF8))
        #expect { try SafetensorsFile(path: invalidUTF8) } throws: { "\($0)".contains("UTF-8") }
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: dir + "/short.safetensors"))
        #expect { try SafetensorsFile(path: dir + "/short.safetensors") } throws: { "\($0)".contains("truncated") }
        #expect(throws: SheafError.self) { try SafetensorsFile(path: dir + "/missing.safetensors") }
    }

    /// Seeded mutations of a valid file at random byte positions: every load either succeeds or
    /// throws SheafError, and reading every tensor of a file that loaded does the same.
    @Test func mutatedFilesNeverCrash() throws {
        let dir = try temporaryFolder("fuzz")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = dir + "/good.safetensors"
        try SafetensorsWriter.write(try Self.sampleTensors(), metadata: ["k": "v"], to: good)
        let original = FileManager.default.contents(atPath: good)!
        var rng = SplitMix64(seed: 2024)
        var loaded = 0, refused = 0
        let path = dir + "/mutant.safetensors"
        for _ in 0..<3000 {
            var bytes = [UInt8](original)
            switch rng.next() % 4 {
            case 0: bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next())
            case 1: bytes[Int(rng.next() % UInt64(min(bytes.count, 200)))] ^= UInt8(1 << (rng.next() % 8))
            case 2: bytes.removeLast(Int(rng.next() % UInt64(bytes.count)))
            default:
                let at = Int(rng.next() % UInt64(bytes.count))
                bytes.insert(contentsOf: [UInt8](repeating: UInt8(truncatingIfNeeded: rng.next()), count: 1 + Int(rng.next() % 4)), at: at)
            }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            // Every call inside throws SheafError only (typed throws), so any catch is a refusal.
            do throws(SheafError) {
                let f = try SafetensorsFile(path: path)
                for name in f.tensorNames {
                    _ = try f.rawBytes(name)
                    if [.F32, .F16, .BF16].contains(try f.dtype(name)) { _ = try f.float32(name) }
                }
                loaded += 1
            } catch {
                refused += 1
            }
        }
        #expect(loaded + refused == 3000)
        #expect(refused > 500, "mutations should mostly be caught; refused \(refused)")
    }
}

@Suite struct ModelConfigTests {
    let smol = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
         "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
         "rope_theta": 100000.0, "rms_norm_eps": 1e-05, "max_position_embeddings": 8192, "tie_word_embeddings": true,
         "bos_token_id": 1, "eos_token_id": [2, 3]}
        """

    @Test func readsLlamaFamilyConfigs() throws {
        let c = try JSONDecoder().decode(ModelConfig.self, from: Data(smol.utf8))
        #expect(c.headDim == 64 && c.kvHeadCount == 3 && c.tiedEmbeddings && !c.attentionBias && c.eosTokenID == 2)
        #expect(c.linearParameterCount == 30 * (576 * 576 * 2 + 2 * 576 * 192 + 3 * 576 * 1536))
        let qwen = smol.replacingOccurrences(of: "\"llama\"", with: "\"qwen2\"")
        #expect(try JSONDecoder().decode(ModelConfig.self, from: Data(qwen.utf8)).attentionBias)
        // Written and read back unchanged.
        let back = try JSONDecoder().decode(ModelConfig.self, from: try c.configJSON())
        #expect(back == c)
    }

    /// Sizes from a file are bounded before any product of them is taken (2³¹, 2⁶³ − 1 used to
    /// trap in the parameter count), and what Sheaf does not implement is refused by name.
    @Test func refusesOverflowingSizesAndUnsupportedFeatures() throws {
        for huge in ["2147483648", "4294967295", "9223372036854775807"] {
            let json = smol.replacingOccurrences(of: "\"hidden_size\": 576", with: "\"hidden_size\": \(huge)")
            #expect { try JSONDecoder().decode(ModelConfig.self, from: Data(json.utf8)) } throws: { "\($0)".contains("exceeds") }
        }
        let layers = smol.replacingOccurrences(of: "\"num_hidden_layers\": 30", with: "\"num_hidden_layers\": 9223372036854775807")
        #expect { try JSONDecoder().decode(ModelConfig.self, from: Data(layers.utf8)) } throws: { "\($0)".contains("exceeds") }
        let gelu = smol.replacingOccurrences(of: "\"tie_word_embeddings\": true", with: "\"tie_word_embeddings\": true, \"hidden_act\": \"gelu\"")
        #expect { try JSONDecoder().decode(ModelConfig.self, from: Data(gelu.utf8)) } throws: { "\($0)".contains("hidden_act 'gelu'") }
        let scaled = smol.replacingOccurrences(
            of: "\"tie_word_embeddings\": true", with: "\"tie_word_embeddings\": true, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}")
        #expect { try JSONDecoder().decode(ModelConfig.self, from: Data(scaled.utf8)) } throws: { "\($0)".contains("rope_scaling of type 'llama3'") }
        let plain = smol.replacingOccurrences(of: "\"tie_word_embeddings\": true", with: "\"tie_word_embeddings\": true, \"rope_scaling\": null, \"hidden_act\": \"silu\"")
        #expect(try JSONDecoder().decode(ModelConfig.self, from: Data(plain.utf8)).hiddenSize == 576)
    }

    @Test func refusesUnknownArchitecturesByName() throws {
        let gpt = smol.replacingOccurrences(of: "\"llama\"", with: "\"gpt_neox\"")
        #expect { try JSONDecoder().decode(ModelConfig.self, from: Data(gpt.utf8)) } throws: { error in
            let t = "\(error)"
            return t.contains("gpt_neox") && t.contains("llama, mistral, qwen2")
        }
        let dir = try temporaryFolder("cfg")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(smol.replacingOccurrences(of: "\"hidden_size\": 576,", with: "").utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect { try ModelConfig.load(configJSON: dir + "/config.json") } throws: { "\($0)".contains("hidden_size") }
        try Data(smol.replacingOccurrences(of: "\"num_key_value_heads\": 3", with: "\"num_key_value_heads\": 4").utf8)
            .write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect { try ModelConfig.load(configJSON: dir + "/config.json") } throws: { "\($0)".contains("multiple") }
        // A repeated key (JSONDecoder would keep the last, silently).
        try Data(smol.replacingOccurrences(of: "\"hidden_size\": 576", with: "\"hidden_size\": 576, \"hidden_size\": 512").utf8)
            .write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect { try ModelConfig.load(configJSON: dir + "/config.json") } throws: { "\($0)".contains("duplicate key 'hidden_size'") }
        // Broken JSON names the file and where, not Foundation's "isn't in the correct format".
        try Data("{\"hidden_size\": 576,".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect { try ModelConfig.load(configJSON: dir + "/config.json") } throws: { error in
            let t = "\(error)"
            return t.contains("config.json") && !t.contains("correct format")
        }
    }
}

@Suite struct CompressedManifestTests {
    /// sheaf.json with a repeated key, or broken JSON, gets one line naming the file and the fault.
    @Test func badManifestsNameTheFault() throws {
        let repeated = #"{"format": "sheaf-compressed", "format": "x", "formatVersion": 2}"#
        #expect { try CompressedManifest.decode(Data(repeated.utf8), path: "/m/sheaf.json") } throws: { error in
            let t = "\(error)"
            return t.contains("/m/sheaf.json") && t.contains("duplicate key 'format'") && !t.contains("\n")
        }
        #expect { try CompressedManifest.decode(Data(#"{"format": "#.utf8), path: "/m/sheaf.json") } throws: { error in
            let t = "\(error)"
            return t.contains("/m/sheaf.json") && t.contains("not valid JSON") && t.contains("at byte")
        }
    }
}

/// A tensor's mapped pages are released once it is converted (so a loaded model is resident
/// once), and reading it again gives the same values from the file.
@Suite struct MappedPagesTests {
    #if os(Linux)
        @Test func convertedTensorsReleaseTheirPages() throws {
            let dir = try temporaryFolder("pages")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // 96 KiB of F32 (23 whole pages or more) between two small neighbours.
            let big = Matrix<Float>.random(rows: 96, cols: 256, seed: 3).values
            let path = dir + "/a.safetensors"
            try SafetensorsWriter.write(
                [
                    try TensorToWrite(name: "a", shape: [3], values: [1, 2, 3]),
                    try TensorToWrite(name: "big", shape: [96, 256], values: big),
                    try TensorToWrite(name: "z", shape: [2], values: [4, 5]),
                ], metadata: [:], to: path)
            // Without the release, a conversion leaves every page it read resident.
            let keeping = try SafetensorsFile(path: path, releasePages: false)
            #expect(try keeping.float32("big") == big)
            let kept = try #require(try keeping.residentPages("big"))
            #expect(kept.total >= 23 && kept.resident == kept.total, "kept: \(kept)")

            let file = try SafetensorsFile(path: path)
            #expect(try file.float32("big") == big)
            let released = try #require(try file.residentPages("big"))
            #expect(released.resident == 0 && released.total == kept.total, "after float32: \(released)")
            // Back from the file, unchanged; the neighbours read as written.
            #expect(try file.float32("big") == big)
            #expect(try file.rawBytes("big") == (try TensorToWrite(name: "big", shape: [96, 256], values: big)).storedBytes())
            #expect(try file.residentPages("big")?.resident == 0)
            #expect(try file.float32("a") == [1, 2, 3] && file.float32("z") == [4, 5])
        }

        /// The same for the reference GGUF: Q4_1 blocks dequantised, then released.
        @Test func ggufTensorsReleaseTheirPages() throws {
            let path = GGUFModelTests.modelPath
            try #require(FileManager.default.fileExists(atPath: path), "reference model missing at \(path): run scripts/fixtures")
            let keeping = try GGUFFile(path: path, releasePages: false), file = try GGUFFile(path: path)
            let name = "blk.3.ffn_up.weight"
            let first = try keeping.float32(name)
            let kept = try #require(try keeping.residentPages(name))
            #expect(kept.total > 100 && kept.resident == kept.total, "kept: \(kept)")
            #expect(try file.float32(name) == first)
            #expect(try file.residentPages(name).map { $0.resident == 0 && $0.total == kept.total } == true)
            #expect(try file.float32(name) == first)
        }
    #endif
}
