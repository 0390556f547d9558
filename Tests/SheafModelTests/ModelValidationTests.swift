import Foundation
import SheafCore
import SheafIO
import SheafTestSupport
import Testing

/// Every command opens models through `ModelFiles.open`, which checks the tensor set against
/// the config: a model with a missing tensor, a wrong width or a layer count that does not
/// match its tensors is refused by name, before anything runs or is written.
@Suite struct ModelValidation {
    /// The tiny model with `config.json` edited by `edit` and the tensor `drop` left out.
    func model(_ tag: String, drop: String? = nil, edit: (inout [String: Any]) -> Void = { _ in }) throws -> String {
        let dir = try TinyModel.write(seed: 51)
        let moved = dir + "-\(tag)"
        try? FileManager.default.removeItem(atPath: moved)
        try FileManager.default.moveItem(atPath: dir, toPath: moved)
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: moved + "/config.json"))) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: moved + "/config.json"))
        if let drop {
            let file = try SafetensorsFile(path: moved + "/model.safetensors")
            let kept = try file.tensorNames.filter { $0 != drop }.map { (name) throws -> TensorToWrite in
                try TensorToWrite(name: name, shape: try file.info(name).shape, values: try file.float32(name))
            }
            try SafetensorsWriter.writeModel(kept, to: moved)
        }
        return moved
    }

    func refusal(_ path: String) -> String? {
        do { _ = try ModelFiles.open(path); return nil } catch { return error.description }
    }

    @Test func theTensorSetMustMatchTheConfig() throws {
        #expect(refusal(try model("whole")) == nil)
        let missing = refusal(try model("missing", drop: "model.layers.1.mlp.gate_proj.weight"))
        #expect(missing?.contains("missing tensor 'model.layers.1.mlp.gate_proj.weight'") == true, "\(missing ?? "")")
        let more = refusal(try model("more", edit: { $0["num_hidden_layers"] = 3 }))
        #expect(more?.contains("missing tensor 'model.layers.2.input_layernorm.weight'") == true, "\(more ?? "")")
        let fewer = refusal(try model("fewer", edit: { $0["num_hidden_layers"] = 1 }))
        #expect(fewer?.contains("beyond the config's num_hidden_layers 1") == true, "\(fewer ?? "")")
        let wider = refusal(try model("wider", edit: { $0["hidden_size"] = 80; $0["head_dim"] = 16 }))
        #expect(wider?.contains("model.embed_tokens.weight' has shape [101, 64], the config says [101, 80]") == true, "\(wider ?? "")")
        let vocab = refusal(try model("vocab", edit: { $0["vocab_size"] = 0 }))
        #expect(vocab?.contains("vocab_size must be positive") == true, "\(vocab ?? "")")
        let untied = refusal(try model("untied", drop: "lm_head.weight"))
        #expect(untied?.contains("missing tensor 'lm_head.weight'") == true, "\(untied ?? "")")
    }
}
