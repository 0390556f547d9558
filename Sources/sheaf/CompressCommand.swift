import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafEval
import SheafIO
import SheafModel

/// The methods of the registry, one line each.
let methodList = MethodRegistry.standard.entries.map { "  " + pad($0.name, 14) + " " + $0.summary }.joined(separator: "\n")

/// Each method's options, under the names of the methods that take them (methods that share an
/// option list, as the whitened-SVD variants do, are listed once together).
let methodOptionsHelp: String = {
    var blocks: [(names: [String], options: [MethodOption])] = []
    for e in MethodRegistry.standard.entries {
        let signature = e.options.map(\.name)
        if let k = blocks.firstIndex(where: { $0.options.map(\.name) == signature }) { blocks[k].names.append(e.name) } else {
            blocks.append(([e.name], e.options))
        }
    }
    return blocks.map { block in
        "OPTIONS OF \(block.names.joined(separator: ", ")):\n" + block.options.map { o in
            let head = "  --\(o.name)" + (o.value.map { " \($0)" } ?? ""), indent = String(repeating: " ", count: 19)
            let lines = o.help.split(separator: "\n").map { String($0) }
            let first = head.count < 19 ? pad(head, 19) + lines[0] : head + "\n" + indent + lines[0]
            return ([first] + lines.dropFirst().map { indent + $0 }).joined(separator: "\n")
        }.joined(separator: "\n")
    }.joined(separator: "\n\n")
}()

let compressHelp = """
    USAGE: sheaf compress MODEL --out DIR [--method NAME] [METHOD OPTIONS]
                          [--calib FILE]... [--protocol S|W|P] [--calib-windows N --calib-len L]
                          [--dtype f16|bf16|f32|q8|q4] [--quant-group N] [--embedding-dtype T|auto]
                          [--backend auto|cpu|opencl] [--no-cache] [--eval] [--json] [--force]

    Compresses the decoder's linear layers (q, k, v, o, gate, up, down) of MODEL (a HuggingFace
    folder or a GGUF file) and writes a Sheaf checkpoint to DIR that 'sheaf eval', 'sheaf
    generate' and 'sheaf export' read. METHODS (--method, default basis-sharing):
    \(methodList)

    \(methodOptionsHelp)

    COMMON OPTIONS:
      --calib FILE     calibration text (repeatable); default: the Austen novels of
                       $SHEAF_DATA/austen, else ../shared/data/austen, joined with blank lines.
      --protocol S|W|P calibration of BENCHMARK.md (S: 128 windows of 512 tokens of the default
                       text; W: the same on wikitext-2-raw/wiki.test.tail.raw, in-domain text the
                       evaluation never reads; P: 256 of 2048); --calib-windows, --calib-len and
                       --calib override it.
      --dtype T        storage of the checkpoint's matrices: f16 (default), bf16, f32, q8 or q4.
                       The method's factors, shared bases and coefficients and the source's
                       untouched matrices (modules left dense) are stored as T: a float type
                       rounded to nearest even, or, q8/q4, 8-/4-bit round-to-nearest codes with
                       an f16 minimum and step per group of --quant-group values of a row (the
                       RTN codec; a row that is not a multiple ends in a shorter group). Norms
                       stay f32; codes, labels and a method's own f16 tensors keep their types.
                       Every tensor stays in its stored form in memory. f16 halves the file at
                       +0.1% perplexity (BENCHMARKS.md); a value beyond f16's ±65504 is refused
                       by tensor name (use bf16 or f32 then).
      --quant-group N  values per group for q8/q4 (default 64).
      --embedding-dtype T
                       storage of the token embedding (and an untied head): auto (default), f32,
                       f16, bf16, q8 or q4. auto keeps the source embedding's precision class
                       (q8 for a Q8_0 GGUF embedding, f16 for an F16 one), no wider than --dtype
                       (than f16 when --dtype is q8/q4), and f32 when --dtype is f32.
      --no-cache       do not read or write the calibration Gram cache ($SHEAF_CACHE/grams, else
                       ~/.cache/sheaf/grams), keyed by the model's checksum and the calibration windows.
      --eval           evaluate the result under Protocol S (WikiText-2 test, 32 × 2048 tokens).
      --force          replace DIR if it exists. Nothing is written to DIR unless the run completes.

    Progress with ETA goes to stderr; the report (the method's table: for the whitened-SVD methods
    rank, whitened energy kept and calibration-weighted error ‖X(W − BC)ᵀ‖²/‖XWᵀ‖² per matrix type
    and group; parameters and achieved ratio, time per phase, peak memory) to stdout, or as JSON
    with --json.
    """

let exportHelp = """
    USAGE: sheaf export DIR --out DIR2 [--format hf] [--force]

    Writes a Sheaf compressed checkpoint DIR as a standard dense HuggingFace folder DIR2 (the
    source architecture, every factored weight reconstructed as W = Cᵀ·Bᵀ, float32), which any
    HuggingFace-compatible tool loads.
    """

/// Pulls every `--name value` (or `--name=value`) out of `args`: for options that may repeat.
func extractRepeated(_ name: String, from args: [String]) throws(UsageError) -> (rest: [String], values: [String]) {
    var rest: [String] = [], values: [String] = []
    var it = args.makeIterator()
    while let arg = it.next() {
        if arg == "--" + name {
            guard let v = it.next() else { throw UsageError(description: "--\(name) needs a value") }
            values.append(v)
        } else if arg.hasPrefix("--\(name)=") {
            values.append(String(arg.dropFirst(name.count + 3)))
        } else {
            rest.append(arg)
        }
    }
    return (rest, values)
}

enum CompressCommand {
    /// The common options and flags of `compress`, whatever the method.
    static let commonOptions = Set(["out", "method", "protocol", "calib-windows", "calib-len", "backend"] + storageOptions)
    /// `--dtype`'s default: half the bytes of f32 for +0.1% perplexity (BENCHMARKS.md, Savings I).
    static let defaultDType = TensorStorage.float(.F16)
    /// `--quant-group`'s default: 64 values share a minimum and step (0.5 bits a value of overhead).
    static let defaultQuantGroup = 64

    /// The storage named by `--dtype` (default f16) and `--quant-group` (default 64), and the
    /// embedding's by `--embedding-dtype` (default auto: `TensorStorage.automaticEmbedding` of
    /// `embeddingType`, the source embedding's stored type).
    static func storage(_ a: Arguments, embeddingType: String) throws(UsageError) -> (dtype: TensorStorage, embedding: TensorStorage) {
        let group = try a.int("quant-group") ?? defaultQuantGroup
        guard group >= 1 else { throw UsageError(description: "--quant-group must be a positive number of values, got \(group)") }
        let names = TensorStorage.names.joined(separator: ", ")
        var dtype = defaultDType
        if let value = a.value("dtype") {
            guard let parsed = TensorStorage(name: value, group: group) else {
                throw UsageError(description: "--dtype must be one of \(names), got '\(value)'")
            }
            dtype = parsed
        }
        let embeddingName = a.value("embedding-dtype") ?? "auto"
        if embeddingName == "auto" { return (dtype, .automaticEmbedding(sourceType: embeddingType, dtype: dtype, group: group)) }
        guard let embedding = TensorStorage(name: embeddingName, group: group) else {
            throw UsageError(description: "--embedding-dtype must be auto or one of \(names), got '\(embeddingName)'")
        }
        return (dtype, embedding)
    }

    /// The options `storage` reads.
    static let storageOptions = ["dtype", "quant-group", "embedding-dtype"]
    static let commonFlags: Set<String> = ["eval", "json", "force", "no-cache", "help"]

    /// The method named by `--method` (default basis-sharing), before the rest is parsed: its
    /// options decide what the parser accepts.
    static func methodEntry(_ args: [String], registry: MethodRegistry = .standard) throws(UsageError) -> MethodEntry {
        var name = "basis-sharing"
        for (i, arg) in args.enumerated() {
            if arg == "--method", i + 1 < args.count { name = args[i + 1] }
            if arg.hasPrefix("--method=") { name = String(arg.dropFirst("--method=".count)) }
        }
        guard let entry = registry.entry(name) else {
            throw UsageError(description: "--method must be one of \(registry.names.joined(separator: ", ")), got '\(name)'")
        }
        return entry
    }

    /// Splits `args` into the common arguments and the method's own option values.
    static func methodArguments(_ args: [String], entry: MethodEntry, registry: MethodRegistry = .standard)
        throws(UsageError) -> (rest: [String], method: MethodArguments)
    {
        var rest = args, parsed = MethodArguments()
        let own = Set(entry.options.map(\.name))
        for arg in args where arg.hasPrefix("--") {
            let name = String(arg.dropFirst(2).prefix { $0 != "=" })
            if !own.contains(name) && !commonOptions.contains(name) && !commonFlags.contains(name), registry.optionNames.contains(name) {
                let owners = registry.entries.filter { $0.options.contains { $0.name == name } }.map(\.name)
                throw UsageError(description: "--\(name) is an option of \(owners.joined(separator: ", ")), not of \(entry.name)")
            }
        }
        for option in entry.options {
            if let _ = option.value {
                let (remaining, values) = try extractRepeated(option.name, from: rest)
                if values.count > 1 && !option.repeatable { throw UsageError(description: "--\(option.name) is given more than once") }
                if !values.isEmpty { parsed.values[option.name] = values }
                rest = remaining
            } else {
                let before = rest.count
                rest.removeAll { $0 == "--" + option.name }
                if rest.count < before { parsed.flags.insert(option.name) }
            }
        }
        return (rest, parsed)
    }

    /// The method for this model from its parsed options: malformed values are usage errors
    /// (exit 2), values the model cannot take are refused by the method (exit 1).
    static func makeMethod(_ entry: MethodEntry, _ arguments: MethodArguments, config: ModelConfig) throws -> any CompressionMethod {
        do { return try entry.make(arguments, config) } catch let error as MethodOptionError {
            throw UsageError(description: error.description)
        }
    }

    static func cacheRoot() -> String {
        (Env.get("SHEAF_CACHE") ?? (NSHomeDirectory() + "/.cache/sheaf")) + "/grams"
    }

    static func run(_ args: [String]) throws -> Int32 {
        if args.contains("--help") { print(compressHelp); return 0 }
        let (afterCalib, calib) = try extractRepeated("calib", from: args)
        let entry = try methodEntry(afterCalib)
        let (rest, methodArguments) = try methodArguments(afterCalib, entry: entry)
        let a = try Arguments(rest, options: commonOptions, flags: commonFlags)
        guard a.positionals.count == 1 else { throw UsageError(description: "compress takes one MODEL (a folder or a .gguf file)") }
        guard let out = a.value("out") else { throw UsageError(description: "compress needs --out DIR") }
        let protocolName = a.value("protocol") ?? "S"
        // W calibrates as S does (128 × 512) on in-domain text (BENCHMARK.md).
        guard let proto = EvalProtocol(rawValue: protocolName == "W" ? "S" : protocolName) else {
            throw UsageError(description: "--protocol must be S, W or P")
        }
        let (defaultCount, defaultLength) = CalibrationWindows.size(for: proto)
        let count = try a.int("calib-windows") ?? defaultCount, length = try a.int("calib-len") ?? defaultLength
        let t0 = monotonicSeconds()

        // Everything that can be refused is checked before the long work starts.
        let files = try ModelFiles.open(a.positionals[0])
        let (dtype, embeddingStorage) = try storage(a, embeddingType: try files.info("model.embed_tokens.weight").type)
        let method = try makeMethod(entry, methodArguments, config: files.config)
        try OutputFolder.check(out, inputs: [files.path], replace: a.flag("force"))
        guard length <= files.config.maxPositions else {
            throw UsageError(description: "--calib-len \(length) exceeds the model's context of \(files.config.maxPositions)")
        }
        let calibFiles = try calibrationFiles(calib, protocolName: protocolName)
        let text = try CalibrationWindows.joinedText(files: calibFiles)
        let tokenizer = try files.tokenizer()
        let windows = try CalibrationWindows.windows(tokenizer.encode(text), count: count, length: length)
        let backend = try BackendSelection.make(try Env.backendChoice(a.value("backend")), options: try Env.backendOptions())
        let cache = a.flag("no-cache") ? nil : GramCache(root: cacheRoot())
        // --eval's text is found now, not after the long work.
        let evalTextPath = a.flag("eval") ? try EvalCommand.defaultText() : nil
        if a.flag("eval") && files.config.maxPositions < EvalProtocol.S.context {
            throw UsageError(description: "--eval needs a context of \(EvalProtocol.S.context) tokens; the model has \(files.config.maxPositions)")
        }
        let given = methodArguments.values.sorted { $0.key < $1.key }.map { "--\($0.key) \($0.value.joined(separator: ","))" }
            + methodArguments.flags.sorted().map { "--\($0)" }
        note("compress: \(method.name)\(given.isEmpty ? "" : " " + given.joined(separator: " ")), "
            + "\(count) calibration windows of \(length) tokens on \(backend.kind.rawValue) (\(backend.deviceName)), stored as \(dtype), "
            + "the embedding as \(embeddingStorage)")
        let loadSeconds = monotonicSeconds() - t0

        let result = try Compressor.compress(
            files: files, backend: backend, windows: windows, method: method, cache: cache, dtype: dtype,
            embedding: embeddingStorage, progress: { note("compress: " + $0) })
        let w0 = monotonicSeconds()
        let provenance = try provenance(
            protocolName: a.value("calib-windows") == nil && a.value("calib-len") == nil && calib.isEmpty ? protocolName : nil,
            windows: count, length: length, calibFiles: calibFiles, text: text, result: result, source: files)
        let manifest = try CompressedCheckpoint.write(
            result, source: files, provenance: provenance, to: out, replace: a.flag("force"), progress: { note("compress: " + $0) })
        let writeSeconds = monotonicSeconds() - w0
        note("compress: wrote \(out)")

        var evaluation: PerplexityResult?
        if let evalTextPath {
            let compressed = try ModelFiles.open(out)
            let evalText = try CalibrationWindows.joinedText(files: [evalTextPath])
            let evalWindows = try Perplexity.windows(tokenizer.encode(evalText), context: EvalProtocol.S.context, count: EvalProtocol.S.windows)
            let model = try LlamaModel(files: compressed, backend: backend)
            evaluation = try Perplexity.evaluate(model, windows: evalWindows) { done, total, seconds in
                note("compress: eval window \(done)/\(total), ETA \(fixed(seconds / Double(done) * Double(total - done))) s")
            }
        }
        var seconds = result.seconds
        seconds["load"] = loadSeconds
        seconds["write"] = writeSeconds
        seconds["evaluation"] = evaluation?.seconds
        seconds["total"] = monotonicSeconds() - t0
        let report = Report(
            manifest: manifest, table: result.output.report, seconds: seconds, gramsFromCache: result.gramsFromCache,
            calibrationTokensPerSecond: result.gramsFromCache || method.statistics == .none
                ? nil : Double(count * length) / (result.seconds["calibration"] ?? 1),
            peakResidentBytes: peakResidentBytes(), evaluation: evaluation, dtype: dtype.name,
            embeddingDtype: embeddingStorage.name, bytes: try ModelFiles.open(out).storedBytes())
        if a.flag("json") { try printJSON(report) } else { report.print() }
        return 0
    }

    /// The calibration text files: those given, else the protocol's (W: WikiText-2's held-out
    /// tail; S and P: the Austen novels).
    static func calibrationFiles(_ given: [String], protocolName: String) throws -> [String] {
        !given.isEmpty ? given : protocolName == "W" ? [try CalibrateCommand.protocolWText()] : try CalibrateCommand.defaultCalibrationFiles()
    }

    /// What sheaf.json records about the calibration and the source.
    static func provenance(
        protocolName: String?, windows: Int, length: Int, calibFiles: [String], text: String, result: CompressionResult, source: ModelFiles
    ) throws -> CompressedCheckpoint.Provenance {
        var textHash = SHA256()
        Array(text.utf8).withUnsafeBytes { textHash.update($0) }
        return CompressedCheckpoint.Provenance(
            sheafVersion: version,
            calibration: .init(
                protocolName: protocolName, windows: windows, length: length,
                files: calibFiles.sorted().map { ($0 as NSString).lastPathComponent }, textChecksum: SHA256.hex(textHash.finalize())),
            sourceChecksum: try result.sourceChecksum ?? source.checksum())
    }

    struct Report: Encodable {
        var manifest: CompressedManifest
        /// Printed as a table; its JSON is the manifest's method report.
        var table: MethodReport
        var seconds: [String: Double]
        var gramsFromCache: Bool
        var calibrationTokensPerSecond: Double?
        var peakResidentBytes: Int?
        var evaluation: PerplexityResult?
        /// The storage of the matrices (`--dtype`) and of the embedding, and the checkpoint
        /// folder's bytes by role.
        var dtype: String
        var embeddingDtype: String
        var bytes: StoredBytes

        enum CodingKeys: String, CodingKey {
            case manifest, seconds, gramsFromCache, calibrationTokensPerSecond, peakResidentBytes, evaluation, dtype, embeddingDtype, bytes
        }

        func print() {
            let m = manifest
            let widths = table.columns.indices.map { c in max(table.columns[c].count, table.rows.map { $0[c].count }.max() ?? 0) + 2 }
            Swift.print(zip(table.columns, widths).map { pad($0, $1) }.joined())
            for row in table.rows { Swift.print(zip(row, widths).map { pad($0, $1) }.joined()) }
            Swift.print("linear parameters: \(m.denseLinearParameters) -> \(m.storedLinearParameters); ratio "
                + (m.requestedRatio.map { "requested \($0), " } ?? "") + "achieved \(String(format: "%.4f", m.achievedRatio))"
                + (table.notes.isEmpty ? "" : "; " + table.notes.joined(separator: ", ")))
            Swift.print("checkpoint: \(bytes.summary) on disk, matrices stored as \(dtype), the embedding as \(embeddingDtype)")
            let phases = ["load", "calibration", "method", "write", "evaluation", "total"]
            let times: [String] = phases.compactMap { p in seconds[p].map { "\(p) \(fixed($0)) s" } }
            var source = ""
            if gramsFromCache { source = " (Grams from the cache)" } else if let rate = calibrationTokensPerSecond {
                source = String(format: " (calibration %.0f tokens/s)", rate)
            }
            let peak = peakResidentBytes.map { "\(fixed(Double($0) / 1e9, 2)) GB" } ?? "unknown"
            Swift.print("time: " + times.joined(separator: ", ") + source + "; peak memory " + peak)
            if let e = evaluation {
                Swift.print("perplexity \(String(format: "%.4f", e.perplexity)) (Protocol S, mean NLL \(String(format: "%.6f", e.meanNLL)), "
                    + "\(fixed(e.tokensPerSecond)) tokens/s)")
            }
        }
    }
}

enum ExportCommand {
    static func run(_ args: [String]) throws -> Int32 {
        let a = try Arguments(args, options: ["out", "format"], flags: ["force", "help"])
        if a.flag("help") { print(exportHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "export takes one compressed checkpoint DIR") }
        guard let out = a.value("out") else { throw UsageError(description: "export needs --out DIR2") }
        guard (a.value("format") ?? "hf") == "hf" else { throw UsageError(description: "--format must be hf (the only format so far)") }
        let files = try ModelFiles.open(a.positionals[0])
        try OutputFolder.check(out, inputs: [files.path], replace: a.flag("force"))
        let t0 = monotonicSeconds()
        try CompressedCheckpoint.exportDense(files, to: out, replace: a.flag("force"), progress: { note("export: " + $0) })
        note("export: wrote \(out) in \(fixed(monotonicSeconds() - t0)) s")
        return 0
    }
}
