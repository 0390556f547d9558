import Foundation
import SheafBackend
import SheafCore
import SheafEval
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

extension BackendSuites {
    /// Finite weights whose activations overflow (3e37) are no perplexity: eval fails, naming
    /// the first layer whose output is non-finite, on every backend.
    @Suite struct NonFiniteActivations {
        @Test func evalNamesTheLayerWhereActivationsOverflow() throws {
            let dir = try TinyModel.write(seed: 61)
            let file = try SafetensorsFile(path: dir + "/model.safetensors")
            let tensors = try file.tensorNames.map { (name) throws -> TensorToWrite in
                var v = try file.float32(name)
                if name.hasPrefix("model.layers.1.mlp.") { v = v.map { $0 * 3e37 } }
                return try TensorToWrite(name: name, shape: try file.info(name).shape, values: v)
            }
            try SafetensorsWriter.writeModel(tensors, to: dir)
            let files = try ModelFiles.open(dir)
            let tokens: [Int32] = [5, 17, 99, 0, 42, 42, 7, 100, 63, 1]
            for be: any Backend in [Backends.cpu, try Backends.opencl()] {
                let model = try LlamaModel(files: files, backend: be)
                #expect(try model.firstNonFiniteStep(tokens) == "decoder layer 1", "\(be.kind)")
                #expect { try Perplexity.evaluate(model, windows: [tokens]) } throws: {
                    "\($0)".contains("non-finite") && "\($0)".contains("decoder layer 1")
                }
            }
            let clean = try LlamaModel(files: try ModelFiles.open(try TinyModel.write(seed: 62)), backend: Backends.cpu)
            #expect(try clean.firstNonFiniteStep(tokens) == nil)
        }
    }

    /// What convert, export and compress copy is checked: a NaN in any tensor (here a norm weight,
    /// which no method reads) is refused with the tensor's name and element.
    @Suite struct NonFiniteWeights {
        @Test func copiedTensorsAreChecked() throws {
            let dir = try TinyModel.write(seed: 63)
            let file = try SafetensorsFile(path: dir + "/model.safetensors")
            let tensors = try file.tensorNames.map { (name) throws -> TensorToWrite in
                var v = try file.float32(name)
                if name == "model.norm.weight" { v[3] = .nan }
                return try TensorToWrite(name: name, shape: try file.info(name).shape, values: v)
            }
            try SafetensorsWriter.writeModel(tensors, to: dir)
            let files = try ModelFiles.open(dir)
            #expect { try files.finiteFloat32("model.norm.weight", op: "convert") } throws: {
                "\($0)".contains("'model.norm.weight' at element 3") && "\($0)".contains("convert")
            }
            #expect(try files.finiteFloat32("model.layers.0.mlp.up_proj.weight", op: "convert").count > 0)
        }
    }
}
