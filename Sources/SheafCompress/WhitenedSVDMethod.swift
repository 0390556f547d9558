import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// Whitened SVD in three registry entries: Basis Sharing (one basis per matrix type shared by n
/// consecutive layers, Li et al. 2024), SVD-LLM (n = 1) and plain truncated SVD (no whitening,
/// a baseline), with Basis Sharing's coefficient refit. Stores every module as "low-rank".
public final class WhitenedSVDMethod: CompressionMethod {
    public enum Variant: String, CaseIterable, Sendable {
        case basisSharing = "basis-sharing"
        case svdLLM = "svd-llm"
        case svd

        public var summary: String {
            switch self {
            case .basisSharing: "whitened SVD with one basis per matrix type shared by n consecutive layers (Li et al., 2024)"
            case .svdLLM: "whitened SVD per matrix (SVD-LLM): Basis Sharing with n = 1"
            case .svd: "plain truncated SVD of the weights, no whitening (a baseline)"
            }
        }

        var whitened: Bool { self != .svd }
        var defaultGroupSize: Int { self == .basisSharing ? 2 : 1 }
    }

    /// The command-line options, shared by the three variants.
    public static let options: [MethodOption] = [
        .init("ratio", value: "R", help: """
            fraction of the linear parameters to remove, in (0, 1) (default 0.2);
            a (d_out, d_in) matrix shared by n layers keeps rank
            floor(d_in·d_out·n·(1 − R) / (d_in + n·d_out)).
            """),
        .init("budget", value: "R", help: """
            the same fraction as --ratio (give one of them); with --allocate
            spectrum it holds for the compressed matrices together.
            """),
        .init("allocate", value: "A", help: """
            uniform (default): every matrix keeps --ratio's rank; spectrum: all
            ranks chosen together from the whitened spectra, most calibration
            error removed per parameter first, for the same parameter budget.
            """),
        .init("normalise", value: "N", help: """
            how spectrum weighs matrices: matrix (default: each group's error
            relative to its ‖XWᵀ‖²) or none (absolute calibration error).
            """),
        .init("group-size", value: "N", help: """
            consecutive layers per shared basis (default 2 for basis-sharing,
            else 1); a last, smaller group takes the leftover layers.
            """),
        .init("share", value: "LIST", help: """
            matrix types that share a basis across the group (default
            q,k,v,gate,up; o and down get one basis per layer).
            """),
        .init("matrices", value: "LIST", help: """
            matrix types to compress: all (default) or e.g. q,k,v,o; the rest
            stay dense (the ratio applies to each compressed matrix).
            """),
        .init("rank", value: "TYPE=K", help: """
            fix the rank of a matrix type, overriding the ratio
            (e.g. --rank q=64,down=128; repeatable).
            """, repeatable: true),
        .init("refit", value: "MODE", help: """
            auto (default: on for R ≥ 0.4), on or off: refit the coefficients by
            least squares on the inputs the compressed model (before refit)
            sees, a second calibration pass.
            """),
    ]

    public static let entries: [MethodEntry] = Variant.allCases.map { variant in
        MethodEntry(
            name: variant.rawValue, summary: variant.summary, options: options,
            budget: { r, a, c in
                // R of all linear parameters is R / (the compressed types' share) of theirs.
                let types = try MatrixSelection.parse(a) ?? MatrixType.allCases
                let share = Double(types.reduce(0) { $0 + $1.shape(c).dOut * $1.shape(c).dIn } * c.layerCount) / Double(c.linearParameterCount)
                guard r < share else {
                    throw SheafError.invalidArgument(
                        op: "sweep", detail: "a budget of \(r) is more than \(types.map(\.rawValue).joined(separator: ",")) hold (\(String(format: "%.3f", share)) of the linear parameters)")
                }
                var a = a
                a.values["ratio"] = nil
                a.values["budget"] = ["\(r / share)"]
                return a
            }
        ) { arguments, config in
            try WhitenedSVDMethod(options: try CompressionOptions(variant, arguments), config: config)
        }
    }

    public let options: CompressionOptions
    public let plan: CompressionPlan
    /// Every group, in plan order (type, then first layer), once `finish` has run.
    public private(set) var groups: [FactoredGroup] = []
    public private(set) var refitRidges = 0
    private var factored: [Int: FactoredGroup] = [:]  // plan index → factors
    private var pending: [Int: [LinearInput: Matrix<Double>]] = [:]

    /// Validates the options against the model (every refusal one line naming the option).
    public init(options: CompressionOptions, config: ModelConfig) throws(SheafError) {
        self.options = options
        plan = try CompressionPlan(config: config, options: options)
    }

    public var name: String { options.method.rawValue }
    public var statistics: CalibrationStatistics { .inputGrams }
    public var requestedRatio: Double? { options.ratio }

    public var recordedOptions: JSONValue {
        .object([
            "ratio": .number(options.ratio), "group_size": .int(options.effectiveGroupSize),
            "shared": .array(options.shared.map { .string($0.rawValue) }),
            "matrices": .array(options.matrices.map { .string($0.rawValue) }),
            "rank_overrides": .object(Dictionary(uniqueKeysWithValues: options.rankOverrides.map { ($0.key.rawValue, JSONValue.int($0.value)) })),
            "whitened": .bool(options.method.whitened), "refit": .bool(options.refitEnabled), "epsilon": .number(options.epsilon),
            "allocation": .string(options.allocation.rawValue), "normalisation": .string(options.normalisation.rawValue),
            "seed": .int(Int(clamping: options.seed)),
        ])
    }

    /// Layer i's Grams are in: factor every group that ends at i, then drop the Grams no group
    /// still needs.
    public func layerReady(_ i: Int, grams: [LinearInput: Matrix<Double>]?, context: CompressionContext) throws(SheafError) {
        guard let grams else { throw .invalidArgument(op: "compress \(name)", detail: "needs the calibration Grams") }
        pending[i] = grams
        for (index, g) in plan.groups.enumerated() where g.layers.last == i {
            factored[index] = try WhitenedSVD.factor(
                type: g.type, layers: g.layers,
                weights: try g.layers.map { (l) throws(SheafError) in try context.weight(g.type, layer: l) },
                grams: g.layers.map { pending[$0]![g.type.input]! }, rank: g.rank, whiten: options.method.whitened,
                epsilon: options.epsilon, backend: context.backend)
        }
        for j in pending.keys where MatrixType.allCases.allSatisfy({ plan.groupEnd($0, layer: j) <= i }) { pending[j] = nil }
    }

    public func finish(context: CompressionContext) throws(SheafError) -> MethodOutput {
        groups = try plan.groups.indices.map { (index) throws(SheafError) in
            guard let g = factored[index] else {
                throw .invalidArgument(op: "compress \(name)", detail: "group \(index) was never factored (layers missing)")
            }
            return g
        }
        var files: [String: Data] = [:]
        if options.allocation == .spectrum {
            allocation = try allocate(&groups, context: context)
            files[Self.rankPictureName] = Data(rankMap(context.config).utf8)
        }
        if options.refitEnabled {
            refitRidges = try refit(&groups, context: context)
        }
        var modules: [String: CompressedManifest.Module] = [:]
        var tensors: [(name: String, value: Matrix<Float>)] = []
        for g in groups {
            let basis = Self.basisName(g)
            tensors.append((basis, g.basisT))
            for (p, layer) in g.layers.enumerated() {
                let module = g.type.module(layer: layer), coefficients = module + ".coefficients"
                tensors.append((coefficients, g.coefficientsT[p]))
                modules[module] = .init(kind: LowRankKind.kindName, tensors: ["basis": basis, "coefficients": coefficients])
            }
        }
        return MethodOutput(modules: modules, tensors: tensors, report: report(), files: files)
    }

    public static let rankPictureName = "ranks.svg"

    /// What `--allocate spectrum` chose: the budget in parameters, what it spent, and the
    /// normalised error it leaves (Σ over groups).
    public struct Allocation: Sendable {
        public var budget: Int
        public var spent: Int
        /// Groups whose factors would cost as much as their weights: left dense.
        public var denseGroups: [(type: MatrixType, layers: [Int])]
        public var discarded: Double
        public var uniformDiscarded: Double
    }

    public private(set) var allocation: Allocation?

    /// Chooses every group's rank from its whitened spectrum (`RankAllocator.spectrum`) for the
    /// budget (1 − ratio)·Σ n·d_in·d_out and truncates the full-rank factors to it. The error of
    /// rank k is read off the spectrum: Σ_{j≥k} σ_j² / Σ σ_j².
    func allocate(_ groups: inout [FactoredGroup], context: CompressionContext) throws(SheafError) -> Allocation {
        let c = context.config
        var items: [RankAllocator.Item] = []
        var dense = 0
        for g in groups {
            let (dOut, dIn) = g.type.shape(c), n = g.layers.count
            dense += n * dOut * dIn
            let fixed = options.rankOverrides[g.type]
            items.append(.init(energies: g.singularValues.map { $0 * $0 }, cost: dIn + n * dOut, fixed: fixed, denseCost: fixed == nil ? n * dOut * dIn : nil))
        }
        let budget = Int((Double(dense) * (1 - options.ratio)).rounded(.down))
        guard let choices = RankAllocator.choices(items, budget: budget, normalisation: options.normalisation) else {
            throw .invalidArgument(op: "compress \(name)", detail: "--budget \(options.ratio) leaves fewer than one rank per matrix group: lower it")
        }
        // A group left dense keeps its weights: no module, no factors.
        let ranks = zip(items, choices).map { $1.rank ?? $0.energies.count }
        let uniform = plan.groups.map {
            options.rankOverrides[$0.type] ?? MatrixType.rank(dIn: $0.type.shape(c).dIn, dOut: $0.type.shape(c).dOut, layers: $0.layers.count, ratio: options.ratio)
        }
        for (i, k) in ranks.enumerated() where choices[i] != .dense {
            var g = groups[i]
            let dIn = g.basisT.cols, full = g.rank
            g.basisT = Matrix(unchecked: k, dIn, Array(g.basisT.values.prefix(k * dIn)))
            g.coefficientsT = g.coefficientsT.map { m in
                Matrix(unchecked: m.rows, k, (0..<m.rows * k).map { m.values[($0 / k) * full + $0 % k] })
            }
            let total = items[i].energies.reduce(0, +), tail = items[i].energies.dropFirst(k).reduce(0, +)
            g.energy = total > 0 ? 1 - tail / total : 1
            g.error = total > 0 ? tail / total : 0
            groups[i] = g
        }
        let denseGroups = groups.indices.filter { choices[$0] == .dense }.map { (groups[$0].type, groups[$0].layers) }
        groups = groups.indices.filter { choices[$0] != .dense }.map { groups[$0] }
        context.progress("spectrum allocation: \(zip(ranks, choices).filter { $1 != .dense }.reduce(0) { $0 + $1.0 }) ranks over \(groups.count) groups, "
            + "\(denseGroups.count) groups left dense, for \(budget) parameters")
        return Allocation(
            budget: budget, spent: RankAllocator.cost(items, choices), denseGroups: denseGroups,
            discarded: RankAllocator.discarded(items, ranks: ranks, normalisation: options.normalisation),
            uniformDiscarded: RankAllocator.discarded(items, ranks: uniform.map { max($0, 1) }, normalisation: options.normalisation))
    }

    /// Rank kept per layer (rows) and matrix type (columns), as a fraction of the full rank.
    func rankMap(_ c: ModelConfig) -> String {
        let types = options.matrices
        var values = [[Double?]](repeating: [Double?](repeating: nil, count: types.count), count: c.layerCount)
        for g in groups {
            guard let col = types.firstIndex(of: g.type) else { continue }
            let (dOut, dIn) = g.type.shape(c)
            for l in g.layers { values[l][col] = Double(g.rank) / Double(min(dIn, g.layers.count * dOut)) }
        }
        var map = SVG.HeatMap(
            title: "\(name): rank kept per matrix (\(options.allocation.rawValue) allocation, budget \(options.ratio))",
            values: values, rowTitle: "layer", columnTitle: "matrix type", rowLabels: (0..<c.layerCount).map(String.init),
            columnLabels: types.map { String($0.rawValue.prefix { $0 != "_" }) }, colorTitle: "rank / full rank (unitless)")
        map.subtitle = "groups of \(options.effectiveGroupSize) layers share a basis for \(options.shared.map(\.rawValue).joined(separator: ", ")); normalisation \(options.normalisation.rawValue)"
        map.emptyLabel = "left dense"
        return map.render()
    }

    /// The basis tensor of a group, e.g. "sheaf.bases.q_proj.layers.0-1".
    static func basisName(_ g: FactoredGroup) -> String {
        "sheaf.bases.\(g.type.rawValue).layers.\(g.layers.first!)-\(g.layers.last!)"
    }

    func report() -> MethodReport {
        let refit = options.refitEnabled
        let columns = ["type", "layers", "rank", "energy", "error"] + (refit ? ["refit error"] : []) + ["fallback"]
        let rows: [[String]] = groups.map { g in
            let layers = g.layers.count == 1 ? "\(g.layers[0])" : "\(g.layers.first!)-\(g.layers.last!)"
            return [g.type.rawValue, layers, "\(g.rank)", String(format: "%.4f", g.energy), scientific(g.error)]
                + (refit ? [g.refitError.map(scientific) ?? "-"] : []) + [g.whiteningFallback ? "yes" : "no"]
        }
        let fallbacks = groups.filter(\.whiteningFallback).count
        var notes = ["whitening fallbacks \(fallbacks)"]
        if let a = allocation {
            notes.append(
                "spectrum allocation: \(a.spent) of \(a.budget) budgeted parameters, \(a.denseGroups.count) groups left dense "
                    + "(\(Set(a.denseGroups.map(\.type.rawValue)).sorted().joined(separator: ","))), normalised error left \(scientific(a.discarded)) "
                    + "(uniform rule \(scientific(a.uniformDiscarded))); rank map \(Self.rankPictureName)")
        }
        if refit { notes.append("refit ridges \(refitRidges)") }
        let json: JSONValue = .object([
            "whitening_fallbacks": .int(fallbacks), "refit_ridges": refit ? .int(refitRidges) : .null,
            "allocation": allocation.map { a in
                .object([
                    "budget": .int(a.budget), "spent": .int(a.spent), "discarded": .number(a.discarded),
                    "uniform_discarded": .number(a.uniformDiscarded), "normalisation": .string(options.normalisation.rawValue),
                    "dense_groups": .array(a.denseGroups.map { .object(["type": .string($0.type.rawValue), "layers": .array($0.layers.map(JSONValue.int))]) }),
                ])
            } ?? .null,
            "groups": .array(groups.map { g in
                .object([
                    "type": .string(g.type.rawValue), "layers": .array(g.layers.map(JSONValue.int)), "rank": .int(g.rank),
                    "basis": .string(Self.basisName(g)), "energy": .number(g.energy), "error": .number(g.error),
                    "refit_error": g.refitError.map(JSONValue.number) ?? .null, "whitening_fallback": .bool(g.whiteningFallback),
                ])
            }),
        ])
        return MethodReport(columns: columns, rows: rows, notes: notes, json: json)
    }

    /// Basis Sharing's coefficient refit: runs the calibration windows through the compressed
    /// model (one layer at a time, as calibration does) and, per layer, solves each matrix's
    /// coefficients by least squares on the Gram of the inputs that model feeds it, with the
    /// basis fixed. One pass, as the reference implementation does: the inputs are those of the
    /// compressed model *before* refit (layer i + 1 sees layer i unrefitted, and o and down see
    /// their own block's unrefitted q, k, v, gate, up), so the saved model's inputs differ
    /// slightly from those the refit fitted. Returns how many solves needed a ridge.
    func refit(_ groups: inout [FactoredGroup], context: CompressionContext) throws(SheafError) -> Int {
        let c = context.config, backend = context.backend
        var bases: [Int: MatrixView] = [:]
        let scratch = Scratch(on: backend)
        for (index, g) in groups.enumerated() { bases[index] = try backend.upload(g.basisT.transposed, label: "\(g.type.rawValue) basis") }
        var byModule: [String: (group: Int, position: Int)] = [:]
        for (index, g) in groups.enumerated() { for (p, l) in g.layers.enumerated() { byModule[g.type.module(layer: l)] = (index, p) } }
        var ridges = 0
        var errorTerms = [(Double, Double)](repeating: (0, 0), count: groups.count)
        let t0 = monotonicSeconds()
        let snapshot = groups  // the layers run with the unrefitted coefficients
        var solved = groups
        _ = try Calibration.collectGrams(
            files: context.files, backend: backend, windows: context.windows, keep: false,
            layer: { (i) throws(SheafError) in
                try context.loader.layer(i, replacing: { (t) throws(SheafError) -> (any LinearLayer)? in
                    let module = t.module(layer: i)
                    guard let (index, p) = byModule[module] else { return nil }
                    let g = snapshot[index]
                    let bias = t.hasBias(c) ? try context.loader.hostValues(module + ".bias", shape: [t.shape(c).dOut]) : nil
                    return try LowRankLinear(
                        basis: bases[index]!, basisName: Self.basisName(g), coefficientsT: g.coefficientsT[p].values,
                        coefficientsName: module + ".coefficients", outputSize: t.shape(c).dOut, bias: bias, scratch: scratch,
                        on: backend, name: module)
                })
            },
            onLayer: { (i, grams) throws(SheafError) in
                let host = try grams.download()
                for t in MatrixType.allCases {
                    guard let (index, p) = byModule[t.module(layer: i)] else { continue }
                    let w = try context.weight(t, layer: i)
                    let fit = try WhitenedSVD.refitCoefficients(basisT: solved[index].basisT, weight: w, gram: host[t.input]!)
                    solved[index].coefficientsT[p] = fit.coefficientsT
                    if fit.ridge { ridges += 1 }
                    let (num, den) = try WhitenedSVD.errorTerms(solved[index], position: p, weight: w, gram: host[t.input]!)
                    errorTerms[index].0 += num
                    errorTerms[index].1 += den
                    if p == solved[index].layers.count - 1 {
                        solved[index].refitError = errorTerms[index].1 > 0 ? max(0, errorTerms[index].0) / errorTerms[index].1 : 0
                    }
                }
                let elapsed = monotonicSeconds() - t0
                context.progress("refit: layer \(i + 1)/\(c.layerCount), \(fixed(elapsed)) s, ETA \(fixed(elapsed / Double(i + 1) * Double(c.layerCount - i - 1))) s")
            })
        groups = solved
        return ridges
    }
}

/// "1.234e-05": errors in reports.
func scientific(_ x: Double) -> String { String(format: "%.3e", x) }

public struct CompressionOptions: Sendable {
    public enum Refit: String, Sendable, CaseIterable { case auto, on, off }

    public enum Allocation: String, Sendable, CaseIterable { case uniform, spectrum }

    public var method: WhitenedSVDMethod.Variant = .basisSharing
    /// Fraction of the decoder linear parameters to remove, in (0, 1).
    public var ratio: Double = 0.2
    /// Layers per shared basis; nil takes the method's default (2 for Basis Sharing, else 1).
    public var groupSize: Int?
    /// Matrix types whose basis is shared across the group; the others get one per layer.
    public var shared: [MatrixType] = [.q, .k, .v, .gate, .up]
    /// Per-type ranks that replace the ratio's.
    public var rankOverrides: [MatrixType: Int] = [:]
    /// The matrix types compressed; the others stay dense.
    public var matrices: [MatrixType] = MatrixType.allCases
    /// Coefficient refit on the compressed model's Grams; auto = on for ratio ≥ 0.4.
    public var refit: Refit = .auto
    /// ε of the whitening fallback (−λmin + ε)·I.
    public var epsilon = 1e-6
    /// uniform: each group keeps `ratio`'s rank; spectrum: `RankAllocator` over the whitened spectra.
    public var allocation: Allocation = .uniform
    public var normalisation: RankAllocator.Normalisation = .matrix
    /// The option that gave `ratio` ("ratio" or "budget"), for the errors that name it.
    public var fractionOption = "ratio"
    /// Recorded in the manifest; the methods here are deterministic and draw no random numbers.
    public var seed: UInt64 = 0

    public init() {}

    /// The options of `variant` from the command line's values.
    public init(_ variant: WhitenedSVDMethod.Variant, _ a: MethodArguments) throws(MethodOptionError) {
        method = variant
        if let r = try a.double("ratio", expecting: "a number in (0, 1)") { ratio = r }
        if let b = try a.double("budget", expecting: "a number in (0, 1)") {
            guard a.value("ratio") == nil else { throw MethodOptionError("--budget and --ratio are the same fraction: give one of them") }
            ratio = b
            fractionOption = "budget"
        }
        if let v = a.value("allocate") {
            guard let x = Allocation(rawValue: v) else {
                throw MethodOptionError("--allocate must be one of \(Allocation.allCases.map(\.rawValue).joined(separator: ", ")), got '\(v)'")
            }
            allocation = x
        }
        if let v = a.value("normalise") {
            guard let x = RankAllocator.Normalisation(rawValue: v) else {
                throw MethodOptionError("--normalise must be one of \(RankAllocator.Normalisation.allCases.map(\.rawValue).joined(separator: ", ")), got '\(v)'")
            }
            normalisation = x
        }
        groupSize = try a.int("group-size")
        if let types = try a.matrixTypes("share") { shared = types }
        if let types = try MatrixSelection.parse(a) { matrices = types }
        for item in a.all("rank").flatMap({ $0.split(separator: ",") }) {
            let parts = item.split(separator: "=")
            guard parts.count == 2, let t = MatrixType(name: String(parts[0])), let k = Int(parts[1]) else {
                throw MethodOptionError("--rank expects TYPE=K with TYPE one of \(MatrixType.allCases.map(\.rawValue).joined(separator: ", ")), got '\(item)'")
            }
            rankOverrides[t] = k
        }
        if let r = a.value("refit") {
            guard let mode = Refit(rawValue: r) else { throw MethodOptionError("--refit must be auto, on or off, got '\(r)'") }
            refit = mode
        }
    }

    public var refitEnabled: Bool { refit == .on || (refit == .auto && ratio >= 0.4) }
    public var effectiveGroupSize: Int { groupSize ?? method.defaultGroupSize }
}

/// Which layers share a basis, and the rank of each group, for every matrix type.
public struct CompressionPlan: Sendable {
    public struct Group: Sendable {
        public var type: MatrixType
        public var layers: [Int]
        public var rank: Int
    }

    public let groups: [Group]

    /// Validates the options against the model: every failure is one line naming the option.
    public init(config c: ModelConfig, options o: CompressionOptions) throws(SheafError) {
        guard o.ratio > 0, o.ratio < 1 else {
            throw .invalidArgument(op: "compress", detail: "--\(o.fractionOption) must be in (0, 1), got \(o.ratio)")
        }
        guard !o.matrices.isEmpty else { throw .invalidArgument(op: "compress", detail: "--matrices names no matrix type") }
        if let dense = o.rankOverrides.keys.first(where: { !o.matrices.contains($0) }) {
            throw .invalidArgument(op: "compress", detail: "--rank \(dense.rawValue)=… names a matrix type that --matrices leaves dense")
        }
        let n = o.effectiveGroupSize
        guard n >= 1, n <= c.layerCount else {
            throw .invalidArgument(op: "compress", detail: "--group-size must be between 1 and the model's \(c.layerCount) layers, got \(n)")
        }
        if o.method == .svdLLM && n != 1 {
            throw .invalidArgument(op: "compress", detail: "svd-llm factors each matrix alone (group size 1); use basis-sharing for --group-size \(n)")
        }
        var groups: [Group] = []
        for t in o.matrices {
            let size = o.shared.contains(t) ? n : 1
            let (dOut, dIn) = t.shape(c)
            for start in stride(from: 0, to: c.layerCount, by: size) {
                let layers = Array(start..<min(start + size, c.layerCount))
                // spectrum factors at full rank and truncates once every spectrum is known.
                var rank = o.allocation == .spectrum
                    ? min(dIn, layers.count * dOut) : MatrixType.rank(dIn: dIn, dOut: dOut, layers: layers.count, ratio: o.ratio)
                if let forced = o.rankOverrides[t] {
                    let most = min(dIn, layers.count * dOut)
                    guard forced >= 1, forced <= most else {
                        throw .invalidArgument(op: "compress", detail: "--rank \(t.rawValue)=\(forced) is outside 1...\(most) for (\(dOut), \(dIn)) over \(layers.count) layer(s)")
                    }
                    rank = forced
                }
                guard rank >= 1 else {
                    throw .invalidArgument(
                        op: "compress",
                        detail: "ratio \(o.ratio) leaves rank 0 for \(t.rawValue) (\(dOut), \(dIn)) over \(layers.count) layer(s): lower --ratio")
                }
                groups.append(Group(type: t, layers: layers, rank: rank))
            }
        }
        self.groups = groups
    }

    /// The last layer of the group of type `t` that holds layer `i`.
    func groupEnd(_ t: MatrixType, layer i: Int) -> Int {
        // A type left dense needs no Gram beyond its own layer.
        groups.first { $0.type == t && $0.layers.contains(i) }?.layers.last ?? i
    }
}
