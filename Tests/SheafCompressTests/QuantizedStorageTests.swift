import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

/// Quantised storage as a property of a tensor (Savings I, step 4): a format-3 checkpoint lists
/// tensors stored as codes, minima and steps; every reader sees them under their own names, and
/// the model keeps them quantised on the backend.
extension BackendSuites {
    @Suite struct QuantizedTensors {
        /// `checkpoint` rewritten with every matrix (factors, shared bases, the embedding, dense
        /// modules) quantised with `bits` in groups of `group`, and its F32 twin holding the values
        /// the codes stand for. Returns (quantised, twin).
        static func quantizedRewrite(of checkpoint: String, bits: Int, group: Int, tag: String) throws -> (String, String) {
            let (quantized, twin) = (checkpoint + "-q\(bits)-\(tag)", checkpoint + "-q\(bits)twin-\(tag)")
            for d in [quantized, twin] {
                try? FileManager.default.removeItem(atPath: d)
                try FileManager.default.copyItem(atPath: checkpoint, toPath: d)
                try FileManager.default.removeItem(atPath: d + "/model.safetensors")
            }
            let file = try SafetensorsFile(path: checkpoint + "/model.safetensors")
            var written: [TensorToWrite] = [], twinTensors: [TensorToWrite] = []
            var table: [String: CompressedManifest.QuantizedTensor] = [:]
            for name in file.tensorNames {
                let shape = try file.info(name).shape, values = try file.float32(name)
                guard shape.count == 2 else {
                    written.append(try TensorToWrite(name: name, shape: shape, values: values))
                    twinTensors.append(try TensorToWrite(name: name, shape: shape, values: values))
                    continue
                }
                let (entry, parts, back) = try CompressedManifest.QuantizedTensor.encode(
                    name, try Matrix(rows: shape[0], cols: shape[1], values: values), bits: bits, group: group)
                table[name] = entry
                written += parts
                twinTensors.append(try TensorToWrite(name: name, shape: shape, values: back))
            }
            try SafetensorsWriter.writeModel(written, to: quantized)
            try SafetensorsWriter.writeModel(twinTensors, to: twin)
            var manifest = try CompressedManifest.load(checkpoint + "/sheaf.json")
            manifest.quantizedTensors = table
            try manifest.encoded().write(to: URL(fileURLWithPath: quantized + "/sheaf.json"))
            return (quantized, twin)
        }

        /// Every matrix quantised (4 and 8 bits, a group that leaves a short last group in the
        /// factors' rows): the checkpoint opens with the quantised tensors under their own names
        /// (parts hidden), reads back the codec's values, keeps every factor, dense matrix and the
        /// tied head as uint8 codes on both backends, and computes what the same values in float32
        /// compute.
        @Test(arguments: [(4, 24, false), (8, 16, true)])
        func quantizedTensorsReadAndStayResident(bits: Int, group: Int, tied: Bool) throws {
            let dir = try TinyModel.write(seed: 41, tied: tied)
            let f32 = try StorageDType.checkpoint(try ModelFiles.open(dir), .F32, tag: "quantized-\(bits)")
            let (quantized, twin) = try Self.quantizedRewrite(of: f32, bits: bits, group: group, tag: "read")
            defer { for d in [dir, f32, quantized, twin] { try? FileManager.default.removeItem(atPath: d) } }
            let files = try ModelFiles.open(quantized), twinFiles = try ModelFiles.open(twin)
            #expect(files.manifest?.formatVersion == 3)
            #expect(files.tensorNames == twinFiles.tensorNames, "the parts are hidden, the tensors seen under their names")
            let table = files.manifest?.quantizedTensors ?? [:]
            #expect(table.count >= 15 && table["model.embed_tokens.weight"] != nil, "\(table.keys.sorted())")
            // Rank-19 factors: one short group of 19 at group 24, a short last group of 3 at group 16.
            #expect(group < 19 || table.values.contains { $0.group < group }, "a row shorter than the group is one group")
            for (name, entry) in table {
                let info = try files.info(name)
                #expect(info.shape == (try twinFiles.info(name).shape) && info.type == "Q\(bits)G\(entry.group)", "\(name): \(info)")
                #expect(entry.group == min(group, info.shape[1]))
                #expect(try files.float32(name) == twinFiles.float32(name), "\(name)")
            }
            let bytes = try files.storedBytes()
            #expect(bytes.embedding + bytes.linear + bytes.otherTensors + bytes.files == bytes.total)
            // Codes of `bits` plus 32 bits of minimum and step a group; the tiny model's rows are short.
            #expect(2 * bytes.linear < (try twinFiles.storedBytes().linear), "\(bytes)")

            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let model = try LlamaModel(files: files, backend: be)
                var quantizedLayers = 0
                for layer in model.layers {
                    for t in MatrixType.allCases {
                        if let l = layer[t] as? LowRankLinear {
                            #expect(l.basis.storedScalar == .uint8 && l.coefficients.storedScalar == .uint8, "\(t)")
                            quantizedLayers += 1
                        } else if let d = layer[t] as? DenseLinear {
                            #expect(d.weightT.storedScalar == .uint8, "\(t)")
                            quantizedLayers += 1
                        }
                    }
                }
                #expect(quantizedLayers == 2 * 7)
                let got = try model.logits(CompressFixture.evalTokens).values
                let want = try LlamaModel(files: twinFiles, backend: be).logits(CompressFixture.evalTokens).values
                let bound = ForwardPath.logitsNMSEBetween(files.config, keys: CompressFixture.evalTokens.count)
                let (error, failure) = Parity.compare(got, want)
                #expect(failure.isEmpty && error <= bound, "\(be.kind) tied \(tied): NMSE \(error) (bound \(bound)) \(failure)")
            }
        }

        /// A table that disagrees with the tensors is refused by name when the checkpoint opens:
        /// a part of the wrong shape, a missing part, an impossible group or shape.
        @Test func aTableThatDisagreesWithItsTensorsIsRefusedByName() throws {
            let dir = try TinyModel.write(seed: 43)
            let f32 = try StorageDType.checkpoint(try ModelFiles.open(dir), .F32, tag: "quantized-bad")
            let (quantized, twin) = try Self.quantizedRewrite(of: f32, bits: 4, group: 16, tag: "bad")
            defer { for d in [dir, f32, quantized, twin] { try? FileManager.default.removeItem(atPath: d) } }
            let good = try CompressedManifest.load(quantized + "/sheaf.json")
            let name = "model.embed_tokens.weight"
            func refused(_ edit: (inout CompressedManifest.QuantizedTensor) -> Void, _ words: [String]) throws {
                var m = good
                edit(&m.quantizedTensors![name]!)
                try m.encoded().write(to: URL(fileURLWithPath: quantized + "/sheaf.json"))
                #expect { try ModelFiles.open(quantized) } throws: { e in
                    words.allSatisfy { "\(e)".contains($0) } && "\(e)".contains(name)
                }
            }
            try refused({ $0.group = 8 }, ["minima", "expected"])  // more groups than the minima hold
            try refused({ $0.bits = 8 }, ["codes", "expected"])
            try refused({ $0.steps = "no.such.tensor" }, ["steps", "not in the files"])
            try refused({ $0.codes = $0.minima }, ["codes", "expected"])
            try refused({ $0.group = 0 }, ["group"])
            try refused({ $0.shape = [101] }, ["shape"])
        }

        /// Format 2 (no table) still loads to the same logits as the same checkpoint read as format 3.
        @Test func formatTwoStillLoads() throws {
            let dir = try TinyModel.write(seed: 47)
            let f32 = try StorageDType.checkpoint(try ModelFiles.open(dir), .F32, tag: "format2")
            defer { for d in [dir, f32] { try? FileManager.default.removeItem(atPath: d) } }
            let three = try LlamaModel(files: try ModelFiles.open(f32), backend: Backends.cpu).logits(CompressFixture.evalTokens).values
            let path = f32 + "/sheaf.json"
            let text = try String(contentsOfFile: path, encoding: .utf8)
            #expect(text.contains("\"format_version\" : 3"))
            try text.replacingOccurrences(of: "\"format_version\" : 3", with: "\"format_version\" : 2").write(toFile: path, atomically: true, encoding: .utf8)
            let files = try ModelFiles.open(f32)
            #expect(files.manifest?.formatVersion == 2)
            #expect(try LlamaModel(files: files, backend: Backends.cpu).logits(CompressFixture.evalTokens).values == three)
        }
    }
}

/// `compress --dtype q8|q4` (Savings I, step 4, the writer): every matrix the checkpoint stores
/// is the codec's quantisation of its F32 twin, bit for bit, and parameters still count parameters.
extension BackendSuites {
    @Suite struct QuantizedWriter {
        /// The method's factors and the untouched embedding and head (quantised apart, with their
        /// own bits): each tensor's codes, minima and steps equal `encode` of its twin in the F32
        /// checkpoint made from the same inputs; norms stay F32. The model runs close to the F32 one.
        @Test func storedCodesAreTheQuantisationOfTheirF32Twins() throws {
            let dir = try TinyModel.write(seed: 53)
            let source = try ModelFiles.open(dir)
            let f32 = try StorageDType.checkpoint(source, .F32, tag: "writer-f32")
            let q8 = try StorageDType.checkpoint(
                source, storage: .quantized(bits: 8, group: 16), embedding: .quantized(bits: 4, group: 32), tag: "writer-q8")
            defer { for d in [dir, f32, q8] { try? FileManager.default.removeItem(atPath: d) } }
            let twin = try SafetensorsFile(path: f32 + "/model.safetensors"), file = try SafetensorsFile(path: q8 + "/model.safetensors")
            let manifest = try CompressedManifest.load(q8 + "/sheaf.json"), f32Manifest = try CompressedManifest.load(f32 + "/sheaf.json")
            let table = manifest.quantizedTensors ?? [:]
            #expect(manifest.dtype == "q8" && manifest.embeddingDtype == "q4" && manifest.formatVersion == 3)
            #expect(manifest.storedLinearParameters == f32Manifest.storedLinearParameters, "parameters, not code bytes")
            var compared = 0
            for name in twin.tensorNames {
                let shape = try twin.info(name).shape
                guard shape.count == 2 else {
                    #expect(try file.dtype(name) == .F32 && file.rawBytes(name) == twin.rawBytes(name), "\(name)")
                    continue
                }
                let embedding = TensorRole.of(name) == .embedding
                let (bits, group) = embedding ? (4, 32) : (8, 16)
                let (entry, parts, _) = try CompressedManifest.QuantizedTensor.encode(
                    name, try Matrix(rows: shape[0], cols: shape[1], values: try twin.float32(name)), bits: bits, group: group)
                #expect(table[name] == entry, "\(name): \(String(describing: table[name]))")
                for part in parts {
                    #expect(try file.dtype(part.name) == part.dtype && file.rawBytes(part.name) == part.storedBytes(), "\(part.name)")
                }
                compared += 1
            }
            #expect(compared == table.count && compared >= 20, "\(compared) of \(table.count)")
            let got = try LlamaModel(files: try ModelFiles.open(q8), backend: Backends.cpu).logits(CompressFixture.evalTokens).values
            let want = try LlamaModel(files: try ModelFiles.open(f32), backend: Backends.cpu).logits(CompressFixture.evalTokens).values
            // Uniform noise of a 4-bit code is (range/15)²/12 against a random weight's range²/12:
            // ~1/225 relative in the embedding and again in the untied head (8-bit factors add
            // 1/65025); measured 0.012. A wrong expansion gives an NMSE near 1.
            let error = CompressFixture.nmse(got, want)
            #expect(error < 0.03, "NMSE \(error)")
        }

        /// The embedding's default follows the source's precision class, capped by --dtype.
        @Test func automaticEmbeddingStorage() {
            let auto = { (source: String, dtype: TensorStorage) in TensorStorage.automaticEmbedding(sourceType: source, dtype: dtype, group: 64) }
            let q8 = TensorStorage.quantized(bits: 8, group: 64), q4 = TensorStorage.quantized(bits: 4, group: 64)
            #expect(auto("Q8_0", .float(.F16)) == q8 && auto("Q8_0", q4) == q8 && auto("Q8_0", .float(.F32)) == .float(.F32))
            #expect(auto("Q4_K", .float(.BF16)) == q4 && auto("Q6_K", .float(.F16)) == q8)
            #expect(auto("F32", .float(.F16)) == .float(.F16) && auto("F32", q8) == .float(.F16))
            #expect(auto("BF16", .float(.F16)) == .float(.BF16) && auto("F16", .float(.BF16)) == .float(.F16))
        }
    }
}

/// A decoded token's products read the weights as stored (Savings II, steps 2-3): the logits of
/// decoding token by token equal those of the batched forward pass (weights expanded, then a
/// GEMM) within two computations' rounding, for every storage, on both backends.
extension BackendSuites {
    @Suite struct StoredDecode {
        @Test(arguments: [false, true])
        func decodingMatchesTheBatchedForward(tied: Bool) throws {
            let dir = try TinyModel.write(seed: 59, tied: tied)
            let source = try ModelFiles.open(dir)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let storages: [TensorStorage] = [.float(.F32), .float(.F16), .float(.BF16), .quantized(bits: 8, group: 16), .quantized(bits: 4, group: 32)]
            for storage in storages {
                let out = try StorageDType.checkpoint(source, storage: storage, tag: "decode-\(tied)-\(storage.name)")
                defer { try? FileManager.default.removeItem(atPath: out) }
                let files = try ModelFiles.open(out)
                for be: any Backend in [Backends.cpu, Backends.cpuPortable, try Backends.opencl()] {
                    let model = try LlamaModel(files: files, backend: be)
                    let batched = try model.logits(CompressFixture.evalTokens).values
                    let decoded = try model.logitsTokenByToken(CompressFixture.evalTokens).values
                    let bound = ForwardPath.logitsNMSEBetween(files.config, keys: CompressFixture.evalTokens.count)
                    let (error, failure) = Parity.compare(decoded, batched)
                    #expect(failure.isEmpty && error <= bound, "\(storage) \(be.kind) tied \(tied): NMSE \(error) (bound \(bound)) \(failure)")
                }
            }
        }
    }
}
