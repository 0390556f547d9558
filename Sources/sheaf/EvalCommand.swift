import Foundation
import SheafBackend
import SheafCore
import SheafEval
import SheafIO
import SheafModel

let evalHelp = """
    USAGE: sheaf eval MODEL [--text FILE] [--ctx N] [--windows N|all] [--protocol S|P]
                            [--backend auto|cpu|opencl] [--json] [--profile]

    Perplexity of MODEL (a HuggingFace folder, a GGUF file or a Sheaf compressed checkpoint, whose
    factored layers run as two low-rank products; float32) on non-overlapping
    windows of the text, each scored independently: exp(mean NLL) over every prediction.
    Protocol S (default): the first 32 windows of 2048 tokens of WikiText-2 test; Protocol P:
    all complete windows. --ctx and --windows override the protocol's. The text defaults to
    $SHEAF_DATA/wikitext-2-raw/wiki.test.raw, else ../shared/data/wikitext-2-raw/wiki.test.raw.
    Progress with ETA goes to stderr; the result (with tokens/s and peak memory) to stdout.
    --profile adds the wall time of each forward-pass step (the backend is synchronised after
    each, which costs OpenCL a little throughput) to stderr.
    """

enum EvalCommand {
    /// WikiText-2 test: from SHEAF_DATA, else ../shared/data beside the working directory.
    static func defaultText() throws -> String {
        let candidates = [Env.get("SHEAF_DATA"), "../shared/data"].compactMap { $0 }
            .map { $0 + "/wikitext-2-raw/wiki.test.raw" }
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw UsageError(description: "no evaluation text: pass --text FILE or set SHEAF_DATA to the folder holding wikitext-2-raw/")
        }
        return found
    }

    static func run(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: ["text", "ctx", "windows", "protocol", "backend"], flags: ["json", "help", "profile"])
        if a.flag("help") { print(evalHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "eval takes one MODEL (a folder or a .gguf file)") }
        guard let proto = EvalProtocol(rawValue: a.value("protocol") ?? "S") else {
            throw UsageError(description: "--protocol must be S or P")
        }
        let context = try a.int("ctx") ?? proto.context
        var windowCount = proto.windows
        if let w = a.value("windows") {
            if w == "all" { windowCount = nil } else {
                guard let n = Int(w) else { throw UsageError(description: "--windows expects a count or 'all', got '\(w)'") }
                windowCount = n
            }
        }
        let textPath = try a.value("text") ?? defaultText()
        guard let bytes = FileManager.default.contents(atPath: textPath) else {
            throw SheafError.io(path: textPath, detail: "cannot read the text")
        }
        guard let text = String(data: bytes, encoding: .utf8) else { throw SheafError.io(path: textPath, detail: "not valid UTF-8") }

        let files = try ModelFiles.open(a.positionals[0])
        guard context <= files.config.maxPositions else {
            throw UsageError(description: "a context of \(context) tokens exceeds the model's \(files.config.maxPositions) (pass a smaller --ctx)")
        }
        let tokenizer = try files.tokenizer()
        guard tokenizer.vocabularySize <= files.config.vocabularySize else {
            throw SheafError.invalidArgument(
                op: "eval", detail: "the tokenizer has \(tokenizer.vocabularySize) tokens, the model's vocabulary \(files.config.vocabularySize)")
        }
        let windows = try Perplexity.windows(tokenizer.encode(text), context: context, count: windowCount)
        let backend = try BackendSelection.make(try Env.backendChoice(a.value("backend")), options: try Env.backendOptions())
        note("eval: \(windows.count) windows of \(context) tokens on \(backend.kind.rawValue) (\(backend.deviceName))")
        let model = try LlamaModel(files: files, backend: backend)
        if a.flag("profile") { model.stepTimes = StepTimes() }
        let result = try Perplexity.evaluate(model, windows: windows) { done, total, seconds in
            let eta = seconds / Double(done) * Double(total - done)
            note("eval: window \(done)/\(total), \(fixed(Double(done * context) / seconds)) tokens/s, ETA \(fixed(eta)) s")
        }
        if let times = model.stepTimes { printProfile(times, windows: windows.count, seconds: result.seconds) }
        if a.flag("json") {
            try printJSON(result)
            return 0
        }
        print("perplexity \(String(format: "%.4f", result.perplexity)) (mean NLL \(String(format: "%.6f", result.meanNLL)) over "
            + "\(result.predictions) predictions, \(result.windows) windows of \(result.context)); "
            + "\(fixed(result.seconds)) s, \(fixed(result.tokensPerSecond)) tokens/s, peak memory "
            + (result.peakResidentBytes.map { "\(fixed(Double($0) / 1e9, 2)) GB" } ?? "unknown"))
        return 0
    }
}

/// The --profile table on stderr: seconds per window and share of the evaluation per step.
private func printProfile(_ times: StepTimes, windows: Int, seconds: Double) {
    note("eval profile (per window; share of \(fixed(seconds / Double(windows))) s):")
    for name in times.names.sorted(by: { times.seconds[$0]! > times.seconds[$1]! }) {
        let s = times.seconds[name]!
        note("  \(name.padding(toLength: 14, withPad: " ", startingAt: 0)) \(fixed(s / Double(windows), 3)) s  \(fixed(100 * s / seconds))%")
    }
    note("  \("other".padding(toLength: 14, withPad: " ", startingAt: 0)) \(fixed((seconds - times.total) / Double(windows), 3)) s")
}

let generateHelp = """
    USAGE: sheaf generate MODEL --prompt TEXT [--max-tokens N] [--json] [--backend auto|cpu|opencl]

    Greedy decoding with a KV cache, printing the text as it comes: a quick check that a
    model (dense, or a Sheaf compressed checkpoint) still speaks. Stops at N new tokens (default 64) or
    the end-of-sequence token. The summary line on stderr gives the tokens and seconds; --json
    prints, instead of the text as it comes, the text with the prompt's tokens/s (the prompt's
    forward pass and the first token) and the generation's (each further token, one row at a time:
    the decode speed) apart, and the peak memory.
    """

enum GenerateCommand {
    static func run(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: ["prompt", "max-tokens", "backend"], flags: ["json", "help"])
        if a.flag("help") { print(generateHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "generate takes one MODEL (a folder or a .gguf file)") }
        guard let prompt = a.value("prompt"), !prompt.isEmpty else { throw UsageError(description: "generate needs --prompt TEXT") }
        let maxTokens = try a.int("max-tokens") ?? 64
        guard maxTokens > 0 else { throw UsageError(description: "--max-tokens must be positive") }
        let files = try ModelFiles.open(a.positionals[0])
        let tokenizer = try files.tokenizer()
        let backend = try BackendSelection.make(try Env.backendChoice(a.value("backend")), options: try Env.backendOptions())
        let model = try LlamaModel(files: files, backend: backend)
        let promptIDs = tokenizer.encode(prompt)
        let json = a.flag("json")
        if !json { FileHandle.standardOutput.write(Data(prompt.utf8)) }
        // Decode prompt + continuation and print what follows the prompt's own decoding: a
        // SentencePiece decoder drops a leading space from a continuation decoded alone.
        let promptText = tokenizer.decode(promptIDs, skipSpecial: true)
        var produced: [Int32] = []
        var shown = ""
        let t0 = monotonicSeconds()
        var firstToken: Double?  // when the prompt's pass gave the first token
        _ = try model.generate(prompt: promptIDs, maxTokens: maxTokens, stop: tokenizer.eosID) { token in
            if firstToken == nil { firstToken = monotonicSeconds() }
            // Decode the whole continuation each time: a character may span several tokens.
            produced.append(token)
            let full = tokenizer.decode(promptIDs + produced, skipSpecial: true)
            let text = full.hasPrefix(promptText) ? String(full.dropFirst(promptText.count)) : tokenizer.decode(produced, skipSpecial: true)
            if text.hasPrefix(shown), !text.hasSuffix("\u{FFFD}") {
                if !json { FileHandle.standardOutput.write(Data(text.dropFirst(shown.count).utf8)) }
                shown = text
            }
        }
        let t1 = monotonicSeconds(), promptSeconds = (firstToken ?? t1) - t0, generationSeconds = t1 - (firstToken ?? t1)
        if json {
            try printJSON(GenerateReport(
                text: shown, promptTokens: promptIDs.count, generatedTokens: produced.count, promptSeconds: promptSeconds,
                promptTokensPerSecond: promptSeconds > 0 ? Double(promptIDs.count) / promptSeconds : nil,
                generationSeconds: generationSeconds,
                generationTokensPerSecond: produced.count > 1 && generationSeconds > 0 ? Double(produced.count - 1) / generationSeconds : nil,
                backend: backend.deviceName, peakResidentBytes: peakResidentBytes(), weightBytesPerToken: model.decodeWeightBytes))
        } else {
            print("")
        }
        note("generate: \(produced.count) tokens in \(fixed(t1 - t0, 2)) s on \(backend.kind.rawValue)")
        return 0
    }

    /// `generate --json`: the prompt's pass (prompt tokens, giving the first new token) and the
    /// generation (each further token, one row at a time: the decode speed) timed apart.
    struct GenerateReport: Encodable {
        var text: String
        var promptTokens: Int
        var generatedTokens: Int
        var promptSeconds: Double
        var promptTokensPerSecond: Double?
        var generationSeconds: Double
        /// Tokens after the first, per second: nil when there is at most one.
        var generationTokensPerSecond: Double?
        var backend: String
        var peakResidentBytes: Int?
        /// Weight bytes one decoded token reads, as held in memory (`LlamaModel.decodeWeightBytes`).
        var weightBytesPerToken: Int
    }
}

let calibrateHelp = """
    USAGE: sheaf calibrate MODEL [--calib FILE]... [--protocol S|P] [--calib-windows N --calib-len L]
                                 [--backend auto|cpu|opencl] [--json]

    Runs the calibration windows through MODEL one decoder layer at a time (only that layer's
    weights in memory, the hidden states of every window kept) and accumulates, per layer,
    the Float64 Gram XᵀX of each distinct linear input (q/k/v, o, gate/up, down): what the
    compression methods consume. Reports tokens/s, time and peak memory, and each Gram's
    trace. --calib may be repeated (one file each). Protocol S (default): 128 windows of 512 tokens of the Austen novels
    ($SHEAF_DATA/austen/*.txt, else ../shared/data/austen), joined with blank lines.
    """

enum CalibrateCommand {
    /// Protocol W's calibration text: the part of WikiText-2 test after what the evaluation reads.
    static func protocolWText() throws -> String {
        let candidates = [Env.get("SHEAF_DATA"), "../shared/data"].compactMap { $0 }.map { $0 + "/wikitext-2-raw/wiki.test.tail.raw" }
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw UsageError(description: "no Protocol W text: set SHEAF_DATA to the folder holding wikitext-2-raw/wiki.test.tail.raw")
        }
        return found
    }

    static func defaultCalibrationFiles() throws -> [String] {
        for base in [Env.get("SHEAF_DATA"), "../shared/data"].compactMap({ $0 }) {
            let dir = base + "/austen"
            if let names = try? FileManager.default.contentsOfDirectory(atPath: dir) {
                let files = names.filter { $0.hasSuffix(".txt") }.map { dir + "/" + $0 }
                if !files.isEmpty { return files }
            }
        }
        throw UsageError(description: "no calibration text: pass --calib FILE or set SHEAF_DATA to the folder holding austen/")
    }

    static func run(_ args: [String]) throws -> Int32 {
        // --calib may repeat: collect its values before the generic parser sees the rest.
        let (rest, calib) = try extractRepeated("calib", from: args)
        let a = try Arguments(rest, options: ["protocol", "calib-windows", "calib-len", "backend"], flags: ["json", "help"])
        if a.flag("help") { print(calibrateHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "calibrate takes one MODEL (a folder or a .gguf file)") }
        guard let proto = EvalProtocol(rawValue: a.value("protocol") ?? "S") else { throw UsageError(description: "--protocol must be S or P") }
        let (defaultCount, defaultLength) = CalibrationWindows.size(for: proto)
        let count = try a.int("calib-windows") ?? defaultCount, length = try a.int("calib-len") ?? defaultLength
        let files = try ModelFiles.open(a.positionals[0])
        guard length <= files.config.maxPositions else {
            throw UsageError(description: "--calib-len \(length) exceeds the model's context of \(files.config.maxPositions)")
        }
        let text = try CalibrationWindows.joinedText(files: calib.isEmpty ? try defaultCalibrationFiles() : calib)
        let windows = try CalibrationWindows.windows(try files.tokenizer().encode(text), count: count, length: length)
        let backend = try BackendSelection.make(try Env.backendChoice(a.value("backend")), options: try Env.backendOptions())
        note("calibrate: \(count) windows of \(length) tokens on \(backend.kind.rawValue) (\(backend.deviceName))")
        let t0 = monotonicSeconds()
        struct LayerTrace: Encodable { var layer: Int; var traces: [String: Double] }
        var traces: [LayerTrace] = []
        _ = try Calibration.collectGrams(files: files, backend: backend, windows: windows, keep: false, progress: { done, total in
            let s = monotonicSeconds() - t0
            note("calibrate: layer \(done)/\(total) done, \(fixed(s)) s, ETA \(fixed(s / Double(done) * Double(total - done))) s")
        }, onLayer: { (i, grams) throws(SheafError) in
            var t: [String: Double] = [:]
            for (input, g) in try grams.download() { t[input.rawValue] = (0..<g.rows).reduce(0) { $0 + g[$1, $1] } }
            traces.append(LayerTrace(layer: i, traces: t))
        })
        let seconds = monotonicSeconds() - t0
        struct Out: Encodable {
            var windows: Int; var length: Int; var seconds: Double; var tokensPerSecond: Double; var peakResidentBytes: Int?
            var layers: [LayerTrace]
        }
        let out = Out(windows: count, length: length, seconds: seconds, tokensPerSecond: Double(count * length) / seconds,
                      peakResidentBytes: peakResidentBytes(), layers: traces)
        if a.flag("json") {
            try printJSON(out)
            return 0
        }
        print("calibrated \(count) × \(length) tokens in \(fixed(seconds)) s (\(fixed(out.tokensPerSecond)) tokens/s), peak memory "
            + (out.peakResidentBytes.map { "\(fixed(Double($0) / 1e9, 2)) GB" } ?? "unknown"))
        for t in traces where t.layer % 10 == 0 || t.layer == traces.count - 1 {
            print("  layer \(t.layer): trace " + LayerGrams.Input.allCases.map { "\($0.rawValue) \(sci(t.traces[$0.rawValue] ?? 0))" }.joined(separator: ", "))
        }
        return 0
    }
}
