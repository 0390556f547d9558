import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

/// `compress --dtype`: a checkpoint's float storage (Savings I, step 2).
extension BackendSuites {
    @Suite struct StorageDType {
        /// Compresses the tiny model (Basis Sharing at 0.5) with float storage `dtype` and writes it.
        static func checkpoint(_ source: ModelFiles, _ dtype: SafetensorsDType, tag: String) throws -> String {
            try checkpoint(source, storage: .float(dtype), tag: tag)
        }

        /// The same with any storage, the embedding's apart (nil: the same).
        static func checkpoint(_ source: ModelFiles, storage: TensorStorage, embedding: TensorStorage? = nil, tag: String) throws -> String {
            let method = try WhitenedSVDMethod(options: CompressFixture.options(.basisSharing, ratio: 0.5), config: source.config)
            let r = try Compressor.compress(
                files: source, backend: Backends.cpu, windows: CompressFixture.windows, method: method, dtype: storage, embedding: embedding)
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-dtype-\(getpid())-\(tag)").path
            _ = try CompressedCheckpoint.write(
                r, source: source, provenance: .init(sheafVersion: "test", calibration: nil, sourceChecksum: "test"), to: out, replace: true)
            return out
        }

        /// Every tensor of an F16 (BF16) checkpoint is, bit for bit, the F16 (BF16) rounding of its
        /// twin in the F32 checkpoint made from the same inputs: the factors, the embedding and the
        /// untied head; vectors (norms) stay F32 and equal. The model loads and runs, its logits
        /// within the storage's rounding of the F32 checkpoint's, and sheaf.json records the type.
        @Test func storedTensorsAreTheRoundingOfTheirF32Twins() throws {
            let dir = try TinyModel.write(seed: 31)
            let source = try ModelFiles.open(dir)
            let f32 = try Self.checkpoint(source, .F32, tag: "f32")
            defer { for d in [dir, f32] { try? FileManager.default.removeItem(atPath: d) } }
            let twin = try SafetensorsFile(path: f32 + "/model.safetensors")
            let f32Logits = try LlamaModel(files: try ModelFiles.open(f32), backend: Backends.cpu).logits(CompressFixture.evalTokens).values
            for dtype in [SafetensorsDType.F16, .BF16] {
                let out = try Self.checkpoint(source, dtype, tag: dtype.storageName)
                defer { try? FileManager.default.removeItem(atPath: out) }
                let file = try SafetensorsFile(path: out + "/model.safetensors")
                #expect(file.tensorNames == twin.tensorNames)
                var matrices = 0
                for name in twin.tensorNames {
                    let shape = try twin.info(name).shape
                    #expect(try twin.dtype(name) == .F32, "\(name) in the f32 checkpoint")
                    if shape.count >= 2 {
                        matrices += 1
                        let rounded = try TensorToWrite(name: name, shape: shape, values: try twin.float32(name), as: dtype).storedBytes()
                        let stored = try file.dtype(name)
                        #expect(stored == dtype, "\(name): \(stored)")
                        #expect(try file.rawBytes(name) == rounded, "\(name) is not the \(dtype.rawValue) rounding of its F32 twin")
                    } else {
                        #expect(try file.dtype(name) == .F32 && file.rawBytes(name) == twin.rawBytes(name), "\(name)")
                    }
                }
                #expect(matrices >= 20, "\(matrices) matrices compared")
                #expect(try CompressedManifest.load(out + "/sheaf.json").dtype == dtype.storageName)
                let logits = try LlamaModel(files: try ModelFiles.open(out), backend: Backends.cpu).logits(CompressFixture.evalTokens).values
                // Each weight moves by ≤ u relative (u = 2⁻¹¹ for F16, 2⁻⁸ for BF16); a handful of
                // roundings compound through two layers: a loose, scale-free bound on the logits.
                let u = dtype == .F16 ? 0x1p-11 : 0x1p-8
                let error = CompressFixture.nmse(logits, f32Logits)
                #expect(error < 100 * u * u && error > 0, "\(dtype.rawValue): logits NMSE \(error) against the f32 checkpoint")
            }
        }

        /// A value F16 cannot hold is refused by tensor name, in a method's output and in an
        /// untouched tensor of the source, and nothing is written; BF16 holds it.
        @Test func f16OverflowIsRefusedByName() throws {
            let out = MethodOutput(
                modules: [:], tensors: [("a", try Matrix(rows: 1, cols: 2, values: [1, 2])), ("big", try Matrix(rows: 1, cols: 3, values: [1, -7e4, 2]))],
                report: MethodReport(columns: [], rows: [], json: .null))
            #expect { try out.stored(as: .float(.F16)) } throws: { "\($0)".contains("tensor 'big'") && "\($0)".contains("65504") }
            #expect(try out.stored(as: .float(.BF16)).tensors[1].value.values == [1, -70144, 2])  // -7e4 to 8 significant bits
            #expect(try out.stored(as: .float(.F32)).tensors[1].value.values == [1, -7e4, 2])

            // An embedding with 1e5 in it: compress works (the method never stores it), the write refuses.
            let dir = try TinyModel.write(seed: 33)
            let big = dir + "-big"
            defer { for d in [dir, big] { try? FileManager.default.removeItem(atPath: d) } }
            let tiny = try ModelFiles.open(dir)
            try FileManager.default.createDirectory(atPath: big, withIntermediateDirectories: true)
            try tiny.config.configJSON().write(to: URL(fileURLWithPath: big + "/config.json"))
            try SafetensorsWriter.writeModel(
                try tiny.tensorNames.map { name in
                    var values = try tiny.float32(name)
                    if name == "model.embed_tokens.weight" { values[5] = 1e5 }
                    return try TensorToWrite(name: name, shape: try tiny.info(name).shape, values: values)
                }, to: big)
            let refused = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-dtype-\(getpid())-refused").path
            #expect { try Self.checkpoint(try ModelFiles.open(big), .F16, tag: "refused") } throws: {
                "\($0)".contains("tensor 'model.embed_tokens.weight'") && "\($0)".contains("65504")
            }
            #expect(!FileManager.default.fileExists(atPath: refused))
            let bf16 = try Self.checkpoint(try ModelFiles.open(big), .BF16, tag: "bf16-big")
            try? FileManager.default.removeItem(atPath: bf16)
        }
    }
}

/// Weights stay as stored (Savings I, step 3): a 16-bit checkpoint's factors, dense matrices and
/// head stay 16-bit on the backend and compute what the same values in float32 compute.
extension BackendSuites {
    @Suite struct ResidentStorage {
        /// `dir` with every 16-bit tensor rewritten as F32 (exactly: each half is a float32).
        static func float32Twin(of dir: String) throws -> String {
            let twin = dir + "-f32twin"
            try? FileManager.default.removeItem(atPath: twin)
            try FileManager.default.copyItem(atPath: dir, toPath: twin)
            let file = try SafetensorsFile(path: dir + "/model.safetensors")
            try FileManager.default.removeItem(atPath: twin + "/model.safetensors")
            try SafetensorsWriter.writeModel(
                try file.tensorNames.map { name in try TensorToWrite(name: name, shape: try file.info(name).shape, values: try file.float32(name)) },
                to: twin)
            return twin
        }

        @Test(arguments: [false, true])
        func sixteenBitWeightsStayResident(tied: Bool) throws {
            let dir = try TinyModel.write(seed: 35, tied: tied)
            let f16 = try StorageDType.checkpoint(try ModelFiles.open(dir), .F16, tag: "resident-\(tied)")
            let twin = try Self.float32Twin(of: f16)
            defer { for d in [dir, f16, twin] { try? FileManager.default.removeItem(atPath: d) } }
            let files = try ModelFiles.open(f16)
            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let model = try LlamaModel(files: files, backend: be)
                // Every factor and dense matrix is held as float16.
                for layer in model.layers {
                    for t in MatrixType.allCases {
                        let linear = layer[t]
                        if let l = linear as? LowRankLinear {
                            #expect(l.basis.storedScalar == .float16 && l.coefficients.storedScalar == .float16, "\(t)")
                        } else if let d = linear as? DenseLinear {
                            #expect(d.weightT.storedScalar == .float16, "\(t)")
                        }
                    }
                }
                let got = try model.logits(CompressFixture.evalTokens).values
                let want = try LlamaModel(files: try ModelFiles.open(twin), backend: be).logits(CompressFixture.evalTokens).values
                // The same float32 values either way; the head's products run in column blocks, which
                // a BLAS may round differently: two computations' bound.
                let bound = ForwardPath.logitsNMSEBetween(files.config, keys: CompressFixture.evalTokens.count)
                let (error, failure) = Parity.compare(got, want)
                #expect(failure.isEmpty && error <= bound, "\(be.kind) tied \(tied): NMSE \(error) (bound \(bound)) \(failure)")
            }
        }
    }
}

/// Bytes in every report (Savings I, step 5): by role, adding up to the folder, halving with F16.
extension BackendSuites {
    @Suite struct BytesByRole {
        @Test func bytesByRoleAddUpAndHalveWithF16() throws {
            let dir = try TinyModel.write(seed: 37)
            let source = try ModelFiles.open(dir)
            let f32 = try StorageDType.checkpoint(source, .F32, tag: "bytes-f32"), f16 = try StorageDType.checkpoint(source, .F16, tag: "bytes-f16")
            defer { for d in [dir, f32, f16] { try? FileManager.default.removeItem(atPath: d) } }
            let a = try ModelFiles.open(f32).storedBytes(), b = try ModelFiles.open(f16).storedBytes()
            for (bytes, path) in [(a, f32), (b, f16)] {
                #expect(bytes.total == folderBytes(path) && bytes.embedding + bytes.linear + bytes.otherTensors + bytes.files == bytes.total)
                #expect(bytes.files > 0, "headers, config and manifest are files: \(bytes)")
            }
            // The tiny model is untied: embedding and head, 101 × 64 each.
            #expect(a.embedding == 2 * 101 * 64 * 4 && b.embedding == 2 * 101 * 64 * 2, "\(a) \(b)")
            #expect(a.linear == 2 * b.linear && a.linear > 0 && a.otherTensors == b.otherTensors, "\(a) \(b)")
            // The source's own bytes: every linear weight F32 (7 matrices of 2 layers).
            let dense = try source.storedBytes()
            #expect(dense.linear == 4 * source.config.linearParameterCount, "\(dense)")

            // inspect --json gives the same, and its groups' bytes add up to the tensors'.
            let r = try SheafCLI().sheaf(["inspect", f16, "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            let bytes = json?["bytes"] as? [String: Any], groups = json?["groups"] as? [[String: Any]] ?? []
            #expect(bytes?["total"] as? Int == b.total && bytes?["linear"] as? Int == b.linear, "\(String(describing: bytes))")
            #expect(groups.compactMap { $0["bytes"] as? Int }.reduce(0, +) == b.embedding + b.linear + b.otherTensors)
        }
    }
}
