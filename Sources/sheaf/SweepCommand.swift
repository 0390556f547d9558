import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafEval
import SheafIO
import SheafModel

let sweepHelp = """
    USAGE: sheaf sweep MODEL --methods LIST --budgets LIST --out DIR [--allocate LIST]
                       [--protocol S|W] [--reference FILE] [--eval-windows N] [--keep]
                       [--calib-windows N --calib-len L] [--no-cache] [--dtype T] [--quant-group N] [--embedding-dtype T]
                       [--backend auto|cpu|opencl] [METHOD OPTIONS]

    Compresses MODEL with every method of --methods (those that aim at a parameter budget:
    \(MethodRegistry.standard.entries.filter { $0.budget != nil }.map(\.name).joined(separator: ", ")))
    at every budget of --budgets (fractions of the linear parameters to remove, each in (0, 1)),
    with every allocation of --allocate (uniform, spectrum, sensitivity: for the methods that take
    --allocate; default uniform), evaluates each point on WikiText-2 test (Protocol S: 32 windows
    of 2048 tokens; --eval-windows N for fewer) and the dense model once, and writes into DIR:
      results.json, results.csv   one entry per point: budget, achieved ratio, stored linear
                                  parameters, perplexity, seconds, peak memory, bytes on
                                  disk (all, linear layers, embedding)
      frontier.svg                perplexity (log axis) against achieved ratio, one line per
                                  method and allocation, the dense model as a dashed line, and
                                  the points of --reference FILE (CSV: ratio,perplexity,label)
      pictures/                   each point's own pictures (rank maps, head similarity)
    The calibration (--protocol S: Austen; W: WikiText-2's held-out tail; 128 windows of 512
    tokens, or --calib-windows × --calib-len) runs once: its Grams are cached (unless --no-cache:
    then each point calibrates) and every later point reads them. A killed sweep continues where
    it stopped: points already in DIR/results.json are not run again. Options of the methods
    (e.g. --group-size 1,2, --unit query-head) go to every method that takes them and are part of
    each point's key and label: sweeps with other options may write into the same DIR (same model,
    protocol and evaluation), and its frontier shows them all. --dtype, --quant-group and
    --embedding-dtype are each checkpoint's storage, as in compress (default f16 with the
    embedding auto; part of a point's key and label unless f32, the storage of sweeps before it;
    the embedding's when it differs). --keep keeps each point's checkpoint in DIR/points/.
    """

enum SweepCommand {
    struct Point: Codable, Sendable {
        var key: String
        var method: String
        var allocation: String
        /// The method options the point ran with beyond its budget and allocation ("group-size=1,2
        /// normalise=layer"), empty for none; part of `key`, so sweeps with other options can
        /// share one folder and one frontier.
        var options: String?
        var budget: Double
        var achievedRatio: Double
        var storedLinearParameters: Int
        var perplexity: Double
        /// Mean NLL per prediction, nats.
        var crossEntropy: Double
        var compressSeconds: Double
        var evalSeconds: Double
        var gramsFromCache: Bool
        var peakResidentBytes: Int?
        /// The checkpoint's bytes on disk by role (nil in results written before they were kept).
        var bytes: StoredBytes?
    }

    struct Results: Codable, Sendable {
        var model: String
        var modelChecksum: String
        var calibrationProtocol: String
        /// Calibration windows × tokens.
        var calibration: [Int]
        var evalWindows: Int
        var densePerplexity: Double?
        var points: [Point]
    }

    struct Reference { var ratio: Double; var perplexity: Double; var label: String }

    /// ratio,perplexity,label per line (a header line and blank lines allowed).
    static func readReference(_ path: String) throws -> [Reference] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw SheafError.io(path: path, detail: "cannot read the reference file (UTF-8 CSV: ratio,perplexity,label)")
        }
        var out: [Reference] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || (i == 0 && line.lowercased().hasPrefix("ratio")) { continue }
            let fields = line.split(separator: ",", maxSplits: 2).map { $0.trimmingCharacters(in: .whitespaces) }
            guard fields.count == 3, let r = Double(fields[0]), let p = Double(fields[1]), r >= 0, r < 1, p > 0, p.isFinite, !fields[2].isEmpty else {
                throw SheafError.io(path: path, detail: "line \(i + 1) is not 'ratio,perplexity,label' with ratio in [0, 1) and perplexity > 0: '\(line)'")
            }
            out.append(Reference(ratio: r, perplexity: p, label: fields[2]))
        }
        guard !out.isEmpty else { throw SheafError.io(path: path, detail: "no reference points (ratio,perplexity,label lines)") }
        return out
    }

    static func list(_ value: String?, _ name: String) throws(UsageError) -> [String] {
        guard let value else { throw UsageError(description: "sweep needs --\(name)") }
        let items = value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw UsageError(description: "--\(name) names nothing") }
        return items
    }

    static func run(_ args: [String]) throws -> Int32 {
        if args.contains("--help") { print(sweepHelp); return 0 }
        let registry = MethodRegistry.standard
        // Method options go to every method that takes them; the rest are the sweep's own.
        var rest = args, shared = MethodArguments()
        for option in registry.entries.flatMap(\.options) where option.value != nil && shared.values[option.name] == nil {
            guard !["ratio", "budget", "allocate", "share-rate"].contains(option.name) else { continue }
            let (remaining, values) = try extractRepeated(option.name, from: rest)
            if !values.isEmpty { shared.values[option.name] = values }
            rest = remaining
        }
        let a = try Arguments(
            rest, options: Set(["methods", "budgets", "allocate", "protocol", "reference", "eval-windows", "calib-windows", "calib-len", "out", "backend"]).union(CompressCommand.storageOptions),
            flags: ["keep", "no-cache", "help"])
        guard a.positionals.count == 1 else { throw UsageError(description: "sweep takes one MODEL (a folder or a .gguf file)") }
        guard let out = a.value("out") else { throw UsageError(description: "sweep needs --out DIR") }
        let methodNames = try list(a.value("methods"), "methods")
        var budgets: [Double] = []
        for b in try list(a.value("budgets"), "budgets") {
            guard let x = Double(b), x > 0, x < 1 else { throw UsageError(description: "--budgets: '\(b)' is not a fraction in (0, 1)") }
            budgets.append(x)
        }
        let allocations = try list(a.value("allocate") ?? "uniform", "allocate")
        for x in allocations where CompressionOptions.Allocation(rawValue: x) == nil {
            throw UsageError(description: "--allocate: '\(x)' is not an allocator (\(CompressionOptions.Allocation.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        let protocolName = a.value("protocol") ?? "S"
        guard ["S", "W"].contains(protocolName) else { throw UsageError(description: "--protocol must be S or W") }
        let evalWindows = try a.int("eval-windows") ?? EvalProtocol.S.windows!
        guard evalWindows >= 1 else { throw UsageError(description: "--eval-windows must be at least 1") }
        let references = try a.value("reference").map(readReference) ?? []

        // Every point is made (and so validated) before any work.
        let files = try ModelFiles.open(a.positionals[0])
        let (dtype, embeddingStorage) = try CompressCommand.storage(a, embeddingType: try files.info("model.embed_tokens.weight").type)
        // The storage in a point's key: none for f32 (sweeps before it), the embedding's when it differs.
        var storageKey: [String] = dtype == TensorStorage.float(.F32) ? [] : ["dtype=\(dtype.name)"]
        if case .quantized(_, let group) = dtype, group != CompressCommand.defaultQuantGroup { storageKey.append("quant-group=\(group)") }
        if embeddingStorage != dtype { storageKey.append("embedding=\(embeddingStorage.name)") }
        var plan: [(key: String, method: String, allocation: String, options: String, budget: Double, make: () throws -> any CompressionMethod)] = []
        for name in methodNames {
            guard let entry = registry.entry(name) else {
                throw UsageError(description: "--methods: '\(name)' is not a method (\(registry.names.joined(separator: ", ")))")
            }
            guard let budget = entry.budget else {
                throw UsageError(description: "--methods: \(name) takes a bit budget, not a parameter budget; sweep runs \(registry.entries.filter { $0.budget != nil }.map(\.name).joined(separator: ", "))")
            }
            let own = Set(entry.options.map(\.name))
            var base = MethodArguments()
            for (k, v) in shared.values where own.contains(k) { base.values[k] = v }
            let variant = (base.values.keys.sorted().map { "\($0)=\(base.values[$0]!.last!)" } + storageKey)
                .joined(separator: " ")
            let takesAllocation = own.contains("allocate")
            for allocation in takesAllocation ? allocations : ["uniform"] {
                for b in budgets {
                    var arguments = try budget(b, base, files.config)
                    if takesAllocation { arguments.values["allocate"] = [allocation] }
                    let made = arguments
                    let make = { () throws -> any CompressionMethod in try CompressCommand.makeMethod(entry, made, config: files.config) }
                    _ = try make()
                    plan.append(("\(name)/\(allocation)/\(b)" + (variant.isEmpty ? "" : "/" + variant), name, allocation, variant, b, make))
                }
            }
        }
        if let unused = shared.values.keys.sorted().first(where: { k in !methodNames.contains { registry.entry($0)!.options.contains { $0.name == k } } }) {
            throw UsageError(description: "--\(unused) is an option of none of \(methodNames.joined(separator: ", "))")
        }

        let backend = try BackendSelection.make(try Env.backendChoice(a.value("backend")), options: try Env.backendOptions())
        let tokenizer = try files.tokenizer()
        let calibFiles = try CompressCommand.calibrationFiles([], protocolName: protocolName)
        let calibText = try CalibrationWindows.joinedText(files: calibFiles)
        let (defaultCount, defaultLength) = CalibrationWindows.size(for: .S)
        let count = try a.int("calib-windows") ?? defaultCount, length = try a.int("calib-len") ?? defaultLength
        let windows = try CalibrationWindows.windows(tokenizer.encode(calibText), count: count, length: length)
        let evalText = try CalibrationWindows.joinedText(files: [try EvalCommand.defaultText()])
        let evalWindowsTokens = try Perplexity.windows(tokenizer.encode(evalText), context: EvalProtocol.S.context, count: evalWindows)
        let cache = a.flag("no-cache") ? nil : GramCache(root: CompressCommand.cacheRoot())
        let checksum = try files.checksum()

        // The folder: new, or a sweep of the same model and protocol to continue.
        let fm = FileManager.default
        let resultsPath = out + "/results.json"
        var results = Results(
            model: files.path, modelChecksum: checksum, calibrationProtocol: protocolName, calibration: [count, length], evalWindows: evalWindows,
            densePerplexity: nil, points: [])
        if let data = fm.contents(atPath: resultsPath) {
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            guard let old = try? decoder.decode(Results.self, from: data) else {
                throw SheafError.io(path: resultsPath, detail: "not a sweep's results.json: choose another --out")
            }
            guard old.modelChecksum == checksum, old.calibrationProtocol == protocolName, old.calibration == [count, length], old.evalWindows == evalWindows else {
                throw SheafError.invalidArgument(
                    op: "sweep", detail: "\(out) holds a sweep of another model, calibration or evaluation (\(old.model), Protocol \(old.calibrationProtocol), \(old.calibration[0]) × \(old.calibration[1]) calibration tokens, \(old.evalWindows) eval windows): choose another --out")
            }
            results = old
            note("sweep: continuing \(out): \(old.points.count) points done")
        } else if fm.fileExists(atPath: out), let entries = try? fm.contentsOfDirectory(atPath: out), !entries.isEmpty {
            throw SheafError.invalidArgument(op: "sweep", detail: "\(out) exists and holds no results.json: choose another --out")
        }
        do { try fm.createDirectory(atPath: out + "/pictures", withIntermediateDirectories: true) } catch {
            throw SheafError.io(path: out, detail: "cannot create the folder: \(error.localizedDescription)")
        }

        func evaluate(_ model: LlamaModel, _ what: String) throws -> PerplexityResult {
            try Perplexity.evaluate(model, windows: evalWindowsTokens) { done, total, seconds in
                note("sweep: \(what): eval window \(done)/\(total), ETA \(fixed(seconds / Double(done) * Double(total - done))) s")
            }
        }
        if results.densePerplexity == nil {
            results.densePerplexity = try evaluate(try LlamaModel(files: files, backend: backend), "dense").perplexity
            try write(results, references: references, to: out)
        }
        let todo = plan.filter { p in !results.points.contains { $0.key == p.key } }
        note("sweep: \(plan.count) point\(plan.count == 1 ? "" : "s"), \(plan.count - todo.count) done, \(todo.count) to run on \(backend.kind.rawValue)")
        let t0 = monotonicSeconds()
        for (i, p) in todo.enumerated() {
            let eta = i == 0 ? "" : ", ETA \(fixed((monotonicSeconds() - t0) / Double(i) * Double(todo.count - i))) s"
            note("sweep: point \(i + 1)/\(todo.count): \(p.method) \(p.allocation)\(p.options.isEmpty ? "" : " " + p.options) budget \(p.budget)\(eta)")
            let c0 = monotonicSeconds()
            let result = try Compressor.compress(
                files: files, backend: backend, windows: windows, method: try p.make(), cache: cache, dtype: dtype, embedding: embeddingStorage,
                progress: { note("sweep: \(p.key): " + $0) })
            // A folder name: the key with every character but letters, digits and ".,=-" as "_".
            let tag = String(p.key.replacingOccurrences(of: "/", with: "-").map { $0.isLetter || $0.isNumber || ".,=-".contains($0) ? $0 : "_" })
            let dir = out + "/points/" + tag
            let provenance = try CompressCommand.provenance(
                protocolName: a.value("calib-windows") == nil && a.value("calib-len") == nil ? protocolName : nil, windows: count, length: length,
                calibFiles: calibFiles, text: calibText, result: result, source: files)
            let manifest = try CompressedCheckpoint.write(result, source: files, provenance: provenance, to: dir, replace: true)
            let compressSeconds = monotonicSeconds() - c0
            for name in result.output.files.keys where name.hasSuffix(".svg") {
                try? fm.removeItem(atPath: out + "/pictures/\(tag)-\(name)")
                try? fm.copyItem(atPath: dir + "/" + name, toPath: out + "/pictures/\(tag)-\(name)")
            }
            let written = try ModelFiles.open(dir)
            let bytes = try written.storedBytes()
            let evaluation = try evaluate(try LlamaModel(files: written, backend: backend), p.key)
            if !a.flag("keep") { try? fm.removeItem(atPath: dir) }
            results.points.append(Point(
                key: p.key, method: p.method, allocation: p.allocation, options: p.options.isEmpty ? nil : p.options, budget: p.budget, achievedRatio: manifest.achievedRatio,
                storedLinearParameters: manifest.storedLinearParameters, perplexity: evaluation.perplexity, crossEntropy: evaluation.meanNLL,
                compressSeconds: compressSeconds, evalSeconds: evaluation.seconds, gramsFromCache: result.gramsFromCache,
                peakResidentBytes: peakResidentBytes(), bytes: bytes))
            try write(results, references: references, to: out)
            print("\(p.key): achieved \(String(format: "%.4f", manifest.achievedRatio)), perplexity \(String(format: "%.4f", evaluation.perplexity))")
        }
        if !a.flag("keep") { try? fm.removeItem(atPath: out + "/points") }
        note("sweep: wrote \(out)/results.json, results.csv, frontier.svg")
        return 0
    }

    /// results.json, results.csv and frontier.svg, each written whole under a temporary name
    /// and renamed: a sweep killed at any moment leaves consistent files.
    static func write(_ r: Results, references: [Reference], to out: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try atomicWrite(try encoder.encode(r), to: out + "/results.json")
        var csv = "method,allocation,options,budget,achieved_ratio,stored_linear_parameters,perplexity,compress_seconds,eval_seconds,grams_from_cache,"
            + "bytes_on_disk,linear_bytes,embedding_bytes\n"
        for p in r.points {
            let bytes = [p.bytes?.total, p.bytes?.linear, p.bytes?.embedding].map { $0.map(String.init) ?? "" }.joined(separator: ",")
            csv += "\(p.method),\(p.allocation),\"\(p.options ?? "")\",\(p.budget),\(p.achievedRatio),\(p.storedLinearParameters),\(p.perplexity),"
                + "\(String(format: "%.1f", p.compressSeconds)),\(String(format: "%.1f", p.evalSeconds)),\(p.gramsFromCache),\(bytes)\n"
        }
        try atomicWrite(Data(csv.utf8), to: out + "/results.csv")
        var plot = SVG.LinePlot(
            title: "Perplexity against compression: \(((r.model as NSString).lastPathComponent))",
            xTitle: "achieved ratio (fraction of the linear parameters removed)", yTitle: "perplexity (WikiText-2 test, log scale)", logY: true)
        plot.subtitle = "calibration Protocol \(r.calibrationProtocol) (\(r.calibration[0]) × \(r.calibration[1]) tokens); evaluation \(r.evalWindows) × 2048 tokens of WikiText-2 test"
        func label(_ p: Point) -> String { "\(p.method) (\(p.allocation)\(p.options.map { ", " + $0 } ?? ""))" }
        var labels: [String] = []
        for p in r.points where !labels.contains(label(p)) { labels.append(label(p)) }
        for l in labels {
            plot.series.append(.init(label: l, points: r.points.filter { label($0) == l }.map { ($0.achievedRatio, $0.perplexity) }))
        }
        var referenceLabels: [String] = []
        for ref in references where !referenceLabels.contains(ref.label) { referenceLabels.append(ref.label) }
        for label in referenceLabels {
            plot.series.append(.init(label: label, points: references.filter { $0.label == label }.map { ($0.ratio, $0.perplexity) }, joined: false))
        }
        if let d = r.densePerplexity { plot.horizontals.append((d, "dense model (\(String(format: "%.2f", d)))")) }
        try atomicWrite(Data(plot.render().utf8), to: out + "/frontier.svg")
    }

    static func atomicWrite(_ data: Data, to path: String) throws {
        let partial = path + ".partial"
        do { try data.write(to: URL(fileURLWithPath: partial)) } catch {
            throw SheafError.io(path: path, detail: "cannot write: \(error.localizedDescription)")
        }
        // rename(2) replaces the old file in one step.
        guard rename(partial, path) == 0 else { throw SheafError.io(path: path, detail: "cannot rename \(partial) into place: errno \(errno)") }
    }
}
