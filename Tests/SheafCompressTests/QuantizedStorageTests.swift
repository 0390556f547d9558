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
