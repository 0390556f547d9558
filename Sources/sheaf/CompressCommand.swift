import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafEval
import SheafIO
import SheafModel

let methodList = CompressionMethod.allCases.map { "  " + pad($0.rawValue, 14) + " " + $0.summary }.joined(separator: "\n")

let compressHelp = """
    USAGE: sheaf compress MODEL --out DIR [--method basis-sharing|svd-llm|svd] [--ratio R]
                          [--group-size N] [--share q,k,v,gate,up] [--rank TYPE=K[,TYPE=K…]]
                          [--calib FILE]... [--protocol S|P] [--calib-windows N --calib-len L]
                          [--refit auto|on|off] [--backend auto|cpu|opencl] [--no-cache]
                          [--eval] [--json] [--force]

    Compresses the decoder's linear layers (q, k, v, o, gate, up, down) of MODEL (a HuggingFace
    folder or a GGUF file) and writes a Sheaf checkpoint to DIR that 'sheaf eval', 'sheaf
    generate' and 'sheaf export' read. METHODS:
    \(methodList)

    --ratio R        fraction of the linear parameters to remove, in (0, 1) (default 0.2); the
                     rank of a (d_out, d_in) matrix shared by n layers is
                     floor(d_in·d_out·n·(1 − R) / (d_in + n·d_out)).
    --group-size N   consecutive layers per shared basis (default 2 for basis-sharing, else 1);
                     a last, smaller group takes the leftover layers.
    --share LIST     matrix types that share a basis across the group (default q,k,v,gate,up;
                     o and down get one basis per layer).
    --rank TYPE=K    fix the rank of a matrix type, overriding the ratio (e.g. --rank q=64,down=128).
    --calib FILE     calibration text (repeatable); default: the Austen novels of
                     $SHEAF_DATA/austen, else ../shared/data/austen, joined with blank lines.
    --protocol S|P   calibration size of BENCHMARK.md (S: 128 windows of 512 tokens, P: 256 of
                     2048); --calib-windows and --calib-len override it.
    --refit MODE     refit the coefficients by least squares on the inputs the compressed model
                     (before refit) sees: a second calibration pass; auto (default) = on for R ≥ 0.4.
    --no-cache       do not read or write the calibration Gram cache ($SHEAF_CACHE/grams, else
                     ~/.cache/sheaf/grams), keyed by the model's checksum and the calibration windows.
    --eval           evaluate the result under Protocol S (WikiText-2 test, 32 × 2048 tokens).
    --force          replace DIR if it exists. Nothing is written to DIR unless the run completes.

    Progress with ETA goes to stderr; the report (rank, whitened energy kept and calibration-
    weighted error ‖X(W − BC)ᵀ‖²/‖XWᵀ‖² per matrix type and group, parameters and achieved
    ratio, time per phase, peak memory) to stdout, or as JSON with --json.
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
    static func parseOptions(_ a: Arguments, ranks: [String]) throws(UsageError) -> CompressionOptions {
        var o = CompressionOptions()
        if let m = a.value("method") {
            guard let method = CompressionMethod(rawValue: m) else {
                throw UsageError(description: "--method must be one of \(CompressionMethod.allCases.map(\.rawValue).joined(separator: ", ")), got '\(m)'")
            }
            o.method = method
        }
        if let r = a.value("ratio") {
            guard let ratio = Double(r) else { throw UsageError(description: "--ratio expects a number in (0, 1), got '\(r)'") }
            o.ratio = ratio
        }
        o.groupSize = try a.int("group-size")
        if let list = a.value("share") {
            var shared: [MatrixType] = []
            for name in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
                guard let t = MatrixType(name: name) else {
                    throw UsageError(description: "--share: '\(name)' is not a linear layer of this architecture (\(MatrixType.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                shared.append(t)
            }
            o.shared = shared
        }
        for item in ranks.flatMap({ $0.split(separator: ",") }) {
            let parts = item.split(separator: "=")
            guard parts.count == 2, let t = MatrixType(name: String(parts[0])), let k = Int(parts[1]) else {
                throw UsageError(description: "--rank expects TYPE=K with TYPE one of \(MatrixType.allCases.map(\.rawValue).joined(separator: ", ")), got '\(item)'")
            }
            o.rankOverrides[t] = k
        }
        if let r = a.value("refit") {
            guard let refit = CompressionOptions.Refit(rawValue: r) else { throw UsageError(description: "--refit must be auto, on or off, got '\(r)'") }
            o.refit = refit
        }
        return o
    }

    static func cacheRoot() -> String {
        (Env.get("SHEAF_CACHE") ?? (NSHomeDirectory() + "/.cache/sheaf")) + "/grams"
    }

    static func run(_ args: [String]) throws -> Int32 {
        let (afterCalib, calib) = try extractRepeated("calib", from: args)
        let (rest, ranks) = try extractRepeated("rank", from: afterCalib)
        let a = try Arguments(
            rest, options: ["out", "method", "ratio", "group-size", "share", "protocol", "calib-windows", "calib-len", "refit", "backend"],
            flags: ["eval", "json", "force", "no-cache", "help"])
        if a.flag("help") { print(compressHelp); return 0 }
        guard a.positionals.count == 1 else { throw UsageError(description: "compress takes one MODEL (a folder or a .gguf file)") }
        guard let out = a.value("out") else { throw UsageError(description: "compress needs --out DIR") }
        let options = try parseOptions(a, ranks: ranks)
        guard let proto = EvalProtocol(rawValue: a.value("protocol") ?? "S") else { throw UsageError(description: "--protocol must be S or P") }
        let (defaultCount, defaultLength) = CalibrationWindows.size(for: proto)
        let count = try a.int("calib-windows") ?? defaultCount, length = try a.int("calib-len") ?? defaultLength
        let t0 = monotonicSeconds()

        // Everything that can be refused is checked before the long work starts.
        let files = try ModelFiles.open(a.positionals[0])
        _ = try CompressionPlan(config: files.config, options: options)
        if FileManager.default.fileExists(atPath: out) && !a.flag("force") {
            throw SheafError.io(path: out, detail: "output folder exists (pass --force to replace it)")
        }
        guard length <= files.config.maxPositions else {
            throw UsageError(description: "--calib-len \(length) exceeds the model's context of \(files.config.maxPositions)")
        }
        let calibFiles = calib.isEmpty ? try CalibrateCommand.defaultCalibrationFiles() : calib
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
        note("compress: \(options.method.rawValue), ratio \(options.ratio), group size \(options.effectiveGroupSize), "
            + "\(count) calibration windows of \(length) tokens on \(backend.kind.rawValue) (\(backend.deviceName))")
        let loadSeconds = monotonicSeconds() - t0

        let result = try Compressor.compress(
            files: files, backend: backend, windows: windows, options: options, cache: cache, progress: { note("compress: " + $0) })
        let w0 = monotonicSeconds()
        var textHash = SHA256()
        Array(text.utf8).withUnsafeBytes { textHash.update($0) }
        let provenance = CompressedCheckpoint.Provenance(
            sheafVersion: version,
            calibration: .init(
                protocolName: a.value("calib-windows") == nil && a.value("calib-len") == nil ? proto.rawValue : nil, windows: count,
                length: length, files: calibFiles.sorted().map { ($0 as NSString).lastPathComponent },
                textChecksum: SHA256.hex(textHash.finalize())),
            sourceChecksum: try result.sourceChecksum ?? files.checksum())
        let manifest = try CompressedCheckpoint.write(
            result, source: files, provenance: provenance, to: out, replace: a.flag("force"), progress: { note("compress: " + $0) })
        let writeSeconds = monotonicSeconds() - w0
        note("compress: wrote \(out)")

        var evaluation: PerplexityResult?
        if let evalTextPath {
            let compressed = try ModelFiles.open(out)
            let evalText = try String(contentsOfFile: evalTextPath, encoding: .utf8)
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
            manifest: manifest, seconds: seconds, gramsFromCache: result.gramsFromCache, refitRidges: result.refitRidges,
            calibrationTokensPerSecond: result.gramsFromCache ? nil : Double(count * length) / (result.seconds["calibration"] ?? 1),
            peakResidentBytes: peakResidentBytes(), evaluation: evaluation)
        if a.flag("json") { try printJSON(report) } else { report.print() }
        return 0
    }

    struct Report: Encodable {
        var manifest: CompressedManifest
        var seconds: [String: Double]
        var gramsFromCache: Bool
        var refitRidges: Int
        var calibrationTokensPerSecond: Double?
        var peakResidentBytes: Int?
        var evaluation: PerplexityResult?

        func print() {
            let m = manifest
            let refit = m.refit
            Swift.print(pad("type", 10) + pad("layers", 9) + pad("rank", 7) + pad("energy", 10) + pad("error", 11)
                + (refit ? pad("refit error", 12) : "") + "fallback")
            for g in m.groups {
                let layers = g.layers.count == 1 ? "\(g.layers[0])" : "\(g.layers.first!)-\(g.layers.last!)"
                    var row = pad(g.type, 10) + pad(layers, 9) + pad("\(g.rank)", 7)
                row += pad(String(format: "%.4f", g.energy), 10) + pad(sci(g.error), 11)
                if refit { row += pad(g.refitError.map(sci) ?? "-", 12) }
                Swift.print(row + (g.whiteningFallback ? "yes" : "no"))
            }
            Swift.print("linear parameters: \(m.denseLinearParameters) -> \(m.storedLinearParameters); ratio requested "
                + "\(m.requestedRatio), achieved \(String(format: "%.4f", m.achievedRatio)); whitening fallbacks \(m.whiteningFallbacks)"
                + (refit ? ", refit ridges \(refitRidges)" : ""))
            let phases = ["load", "calibration", "factorization", "refit", "write", "evaluation", "total"]
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
        let t0 = monotonicSeconds()
        try CompressedCheckpoint.exportDense(files, to: out, replace: a.flag("force"), progress: { note("export: " + $0) })
        note("export: wrote \(out) in \(fixed(monotonicSeconds() - t0)) s")
        return 0
    }
}
