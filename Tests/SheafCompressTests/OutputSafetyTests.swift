import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafIO
import SheafTestSupport
import Testing

extension BackendSuites {
    /// `--out` and `--force` never destroy data: not the input, not a folder Sheaf did not write,
    /// not the current folder; one writer at a time; what a killed run left is cleaned.
    @Suite struct OutputSafety {
        let cli = SheafCLI()

        /// A compressed tiny checkpoint in a fresh temporary folder.
        func checkpoint(_ tag: String) throws -> (root: String, model: String) {
            let root = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-safety-\(getpid())-\(tag)").path
            try? FileManager.default.removeItem(atPath: root)
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            let source = try ModelFiles.open(try TinyModel.write(seed: 41))
            let (r, _) = try CompressFixture.compress(source, Backends.cpu, CompressFixture.options(.svdLLM))
            let model = root + "/ckpt"
            _ = try CompressedCheckpoint.write(
                r, source: source, provenance: .init(sheafVersion: "test", calibration: nil, sourceChecksum: "test"), to: model, replace: false)
            return (root, model)
        }

        func oneLine(_ r: SheafCLI.Run, _ status: Int32, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(r.status == status && r.stderr.contains(text) && r.stderr.split(separator: "\n").count == 1,
                    "\(r.status): \(r.stderr)", sourceLocation: sourceLocation)
        }

        @Test func forceNeverReplacesTheInputOrAForeignFolder() throws {
            let (root, model) = try checkpoint("input")
            oneLine(try cli.sheaf(["export", model, "--out", model, "--force"]), 1, "is the input")
            oneLine(try cli.sheaf(["export", model, "--out", model + "/../ckpt/", "--force"]), 1, "is the input")
            oneLine(try cli.sheaf(["export", model, "--out", model + "/inner", "--force"]), 1, "inside the input")
            oneLine(try cli.sheaf(["export", model, "--out", root, "--force"]), 1, "contains the input")
            #expect(FileManager.default.fileExists(atPath: model + "/sheaf.json"))

            // A folder Sheaf did not write, a plain file, the current folder: refused, untouched.
            let foreign = root + "/foreign"
            try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
            try Data("keep me".utf8).write(to: URL(fileURLWithPath: foreign + "/notes.txt"))
            oneLine(try cli.sheaf(["export", model, "--out", foreign, "--force"]), 1, "only a folder Sheaf wrote")
            let file = root + "/plain.txt"
            try Data("keep me".utf8).write(to: URL(fileURLWithPath: file))
            oneLine(try cli.sheaf(["export", model, "--out", file, "--force"]), 1, "is a file")
            oneLine(try cli.sheaf(["export", model, "--out", ".", "--force"], in: foreign), 1, "the current folder")
            #expect(try String(contentsOfFile: foreign + "/notes.txt", encoding: .utf8) == "keep me")
            #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")

            // What Sheaf wrote it may replace.
            let dense = root + "/dense"
            #expect(try cli.sheaf(["export", model, "--out", dense]).status == 0)
            let again = try cli.sheaf(["export", model, "--out", dense, "--force"])
            #expect(again.status == 0, "\(again.stderr)")
            try? FileManager.default.removeItem(atPath: root)
        }

        @Test func oneWriterAtATimeAndDeadRunsAreCleaned() throws {
            let (root, model) = try checkpoint("lock")
            let out = root + "/dense"
            // A live writer (this test process) holds the lock: refused, nothing written.
            try Data("\(getpid())\n".utf8).write(to: URL(fileURLWithPath: out + ".lock"))
            oneLine(try cli.sheaf(["export", model, "--out", out]), 1, "another sheaf (pid \(getpid())) is writing")
            #expect(!FileManager.default.fileExists(atPath: out))
            // A dead one's lock and partial folder are removed, with a notice.
            let dead: Int32 = 4_194_000  // above any pid this machine has handed out
            try Data("\(dead)\n".utf8).write(to: URL(fileURLWithPath: out + ".lock"))
            try FileManager.default.createDirectory(atPath: out + ".partial-\(dead)", withIntermediateDirectories: true)
            try Data(count: 1000).write(to: URL(fileURLWithPath: out + ".partial-\(dead)/model.safetensors"))
            let r = try cli.sheaf(["export", model, "--out", out])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stderr.contains("removed the stale lock") && r.stderr.contains("did not finish"), "\(r.stderr)")
            let left = try FileManager.default.contentsOfDirectory(atPath: root).filter { $0.contains(".partial-") || $0.hasSuffix(".lock") }
            #expect(left.isEmpty, "\(left)")
            try? FileManager.default.removeItem(atPath: root)
        }
    }
}
