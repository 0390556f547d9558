import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

/// A toy method written against the seam alone: it keeps every linear layer dense but stores
/// each weight under a new name, so the driver, the checkpoint writer, the loader and the export
/// all have to go through the method's output and the "dense" stored-layer kind. Nothing outside
/// this file and the registry table below knows it.
final class KeepDenseMethod: CompressionMethod {
    static let entry = MethodEntry(
        name: "keep-dense", summary: "every linear layer dense, under a new tensor name (a test of the seam)",
        options: [.init("only", value: "LIST", help: "matrix types to list (default all)")]
    ) { arguments, _ in KeepDenseMethod(types: try arguments.matrixTypes("only") ?? MatrixType.allCases) }

    let types: [MatrixType]
    private var modules: [String: CompressedManifest.Module] = [:]
    private var tensors: [(name: String, value: Matrix<Float>)] = []
    private(set) var layersSeen: [Int] = []

    init(types: [MatrixType]) { self.types = types }

    var name: String { "keep-dense" }
    var statistics: CalibrationStatistics { .none }
    var requestedRatio: Double? { nil }
    var recordedOptions: JSONValue { .object(["only": .array(types.map { .string($0.rawValue) })]) }

    func layerReady(_ layer: Int, grams: [LinearInput: Matrix<Double>]?, context: CompressionContext) throws(SheafError) {
        layersSeen.append(layer)
        for t in types {
            let module = t.module(layer: layer), name = "toy." + module
            tensors.append((name, try context.weight(t, layer: layer)))
            modules[module] = .init(kind: "dense", tensors: ["weight": name])
        }
    }

    func finish(context: CompressionContext) throws(SheafError) -> MethodOutput {
        MethodOutput(
            modules: modules, tensors: tensors,
            report: MethodReport(columns: ["modules"], rows: [["\(modules.count)"]], json: .object(["modules": .int(modules.count)])))
    }
}

extension BackendSuites {
    @Suite struct MethodSeam {
        /// The standard table plus the toy's line: all a new method needs.
        static let registry = MethodRegistry(entries: MethodRegistry.standard.entries + [KeepDenseMethod.entry])

        func logits(_ files: ModelFiles) throws -> [Float] {
            try LlamaModel(files: files, backend: Backends.cpu).logits(CompressFixture.evalTokens).values
        }

        @Test func aToyMethodNeedsOnlyItsFileAndTheTable() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 31))
            let entry = try #require(Self.registry.entry("keep-dense"))
            let method = try entry.make(MethodArguments(), source.config) as! KeepDenseMethod
            let r = try Compressor.compress(files: source, backend: Backends.cpu, windows: CompressFixture.windows, method: method)
            #expect(method.layersSeen == [0, 1] && !r.gramsFromCache)
            let out = try CompressFixture.write(r, source: source, tag: "toy")
            let manifest = try #require(out.manifest)
            #expect(manifest.method.name == "keep-dense" && manifest.modules.count == 14 && manifest.achievedRatio == 0)
            #expect(manifest.storedLinearParameters == source.config.linearParameterCount)
            #expect(!out.tensorNames.contains("model.layers.0.self_attn.q_proj.weight") && out.tensorNames.contains("toy.model.layers.0.self_attn.q_proj"))
            // The same weights under other names: bit-identical logits.
            #expect(try logits(out) == logits(source))
            // The dense export restores the HuggingFace names and values.
            let exported = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-toy-export-\(getpid())").path
            try CompressedCheckpoint.exportDense(out, to: exported, replace: true)
            let hf = try ModelFiles.open(exported)
            #expect(hf.tensorNames == source.tensorNames)
            for name in source.tensorNames { #expect(try hf.float32(name) == source.float32(name), "\(name)") }
            // A method's own malformed option is a MethodOptionError naming it.
            #expect(throws: MethodOptionError.self) { try entry.make(MethodArguments(values: ["only": ["q,attn"]]), source.config) }
        }

        /// A format-1 sheaf.json (Sheaf 0.1: groups of a basis and per-layer coefficients) loads
        /// as format 2 and evaluates to the same logits; an unknown kind or a missing tensor is
        /// one clear error.
        @Test func formatOneStillLoads() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 32))
            let (r, groups) = try CompressFixture.compress(source, Backends.cpu, CompressFixture.options(.basisSharing, groupSize: 2))
            let written = try CompressFixture.write(r, source: source, tag: "format2")
            let manifest = try #require(written.manifest)
            // sheaf.json as Sheaf 0.1 wrote it, from the same groups.
            let v1: [String: Any] = [
                "format": "sheaf-compressed", "format_version": 1, "sheaf_version": "0.1.0", "method": "basis-sharing",
                "requested_ratio": 0.5, "achieved_ratio": manifest.achievedRatio, "dense_linear_parameters": manifest.denseLinearParameters,
                "stored_linear_parameters": manifest.storedLinearParameters, "group_size": 2,
                "shared": ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"], "rank_overrides": [String: Int](), "whitened": true,
                "refit": false, "whitening_fallbacks": 0, "seed": 0, "source": source.path, "source_checksum": "test",
                "groups": groups.map { g in
                    ["type": g.type.rawValue, "layers": g.layers, "rank": g.rank,
                     "basis": "sheaf.bases.\(g.type.rawValue).layers.\(g.layers.first!)-\(g.layers.last!)", "energy": g.energy,
                     "error": g.error, "whitening_fallback": g.whiteningFallback] as [String: Any]
                },
            ]
            let path = written.path + "/" + CompressedManifest.fileName
            try JSONSerialization.data(withJSONObject: v1, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path))
            let v1Files = try ModelFiles.open(written.path)
            let converted = try #require(v1Files.manifest)
            #expect(converted.modules == manifest.modules && converted.method.name == "basis-sharing")
            #expect(converted.method.report["converted_from_format"]?.intValue == 1)
            #expect(try logits(v1Files) == logits(try CompressFixture.write(r, source: source, tag: "format2-again")))

            // Damage: an unknown kind, then a module without its basis.
            var bad = manifest
            bad.modules["model.layers.0.self_attn.q_proj"]!.kind = "sparse"
            try bad.encoded().write(to: URL(fileURLWithPath: path))
            #expect { try LlamaModel(files: try ModelFiles.open(written.path), backend: Backends.cpu) } throws: {
                "\($0)".contains("kind 'sparse'") && "\($0)".contains("model.layers.0.self_attn.q_proj")
            }
            bad = manifest
            bad.modules["model.layers.1.mlp.down_proj"]!.tensors["basis"] = nil
            try bad.encoded().write(to: URL(fileURLWithPath: path))
            #expect { try CompressedCheckpoint.exportDense(try ModelFiles.open(written.path), to: written.path + "-x", replace: true) } throws: {
                "\($0)".contains("names no 'basis' tensor")
            }
        }
    }
}
