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
            error removed per parameter first, for the same parameter budget;
            sensitivity: as spectrum, each matrix's error weighed by how far the
            next-token distributions moved (KL from the dense model's, per
            token) when it alone was truncated (probed).
            """),
        .init("normalise", value: "N", help: """
            how the allocator weighs errors: matrix (default for one group size:
            each group's error relative to its ‖XWᵀ‖², a group counted once),
            layer (default with several sizes or sensitivity: the sum over every
            layer's matrix of ‖Xᵢ(Wᵢ − Ŵᵢ)ᵀ‖²/‖XᵢWᵢᵀ‖²) or none (absolute error).
            """),
        .init("group-size", value: "N", help: """
            consecutive layers per shared basis (default 2 for basis-sharing,
            else 1); a last, smaller group takes the leftover layers. A list
            (1,2,4; each size divides the next) with --allocate spectrum or
            sensitivity lets the allocator choose, per matrix type and place,
            where to share and over how many layers.
            """),
        .init("probe-windows", value: "P", help: """
            sensitivity: calibration windows the probes run on (default 2; the
            probes are one partial forward pass per matrix, cached with the Grams).
            """),
        .init("probe-error", value: "E", help: """
            sensitivity: each probe truncates one matrix to the rank that leaves
            this relative calibration error, in (0, 1) (default 0.05).
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
            "group_sizes": .array(options.groupSizeCandidates.map(JSONValue.int)),
            "shared": .array(options.shared.map { .string($0.rawValue) }),
            "matrices": .array(options.matrices.map { .string($0.rawValue) }),
            "rank_overrides": .object(Dictionary(uniqueKeysWithValues: options.rankOverrides.map { ($0.key.rawValue, JSONValue.int($0.value)) })),
            "whitened": .bool(options.method.whitened), "refit": .bool(options.refitEnabled), "epsilon": .number(options.epsilon),
            "allocation": .string(options.allocation.rawValue), "normalisation": .string(options.normalisation.rawValue),
            "probe_windows": options.allocation == .sensitivity ? .int(options.probeWindows) : .null,
            "probe_error": options.allocation == .sensitivity ? .number(options.probeError) : .null,
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
            // An allocator never keeps factors that cost as much as the dense weights: hold no more.
            if options.allocation != .uniform, options.rankOverrides[g.type] == nil {
                let (dOut, dIn) = g.type.shape(context.config), n = g.layers.count
                let cap = max(1, RankAllocator.largestRank(cost: dIn + n * dOut, denseCost: n * dOut * dIn))
                if cap < factored[index]!.rank { factored[index] = factored[index]!.truncated(to: cap) }
            }
        }
        for j in pending.keys where MatrixType.allCases.allSatisfy({ plan.groupEnd($0, layer: j) <= i }) { pending[j] = nil }
    }

    public func finish(context: CompressionContext) throws(SheafError) -> MethodOutput {
        let all = try plan.groups.indices.map { (index) throws(SheafError) in
            guard let g = factored[index] else {
                throw .invalidArgument(op: "compress \(name)", detail: "group \(index) was never factored (layers missing)")
            }
            return g
        }
        factored = [:]
        var files: [String: Data] = [:]
        if options.allocation == .uniform {
            groups = all
        } else {
            let a = try allocate(all, context: context)
            (groups, allocation) = (a.groups, a.allocation)
            files[Self.rankPictureName] = Data(rankMap(context.config).utf8)
            files[Self.errorPictureName] = Data(errorMap(context.config).utf8)
            if let s = a.allocation.sensitivity { files[Self.sensitivityPictureName] = Data(s.map(context.config, method: name).utf8) }
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
    public static let errorPictureName = "errors.svg"
    public static let sensitivityPictureName = "sensitivity.svg"

    /// What an allocator chose: the budget in parameters, what it spent, and the normalised
    /// error it leaves (Σ over groups).
    public struct Allocation: Sendable {
        public var budget: Int
        public var spent: Int
        /// Groups whose factors would cost as much as their weights: left dense.
        public var denseGroups: [(type: MatrixType, layers: [Int])]
        public var discarded: Double
        /// The same measure for the uniform rule at the default group size.
        public var uniformDiscarded: Double
        /// The measured weights (`--allocate sensitivity`).
        public var sensitivity: Sensitivity?
        public var seconds: Double
    }

    public private(set) var allocation: Allocation?

    /// The error a group leaves per kept rank, in the units the allocator compares: energies
    /// e_j with Σ_{j ≥ k} e_j the error at rank k (relative per group for `matrix`, summed per
    /// layer for `layer`, absolute for `none`; each layer's error weighed by its measured
    /// sensitivity when given).
    func weightedEnergies(_ g: FactoredGroup, sensitivity: Sensitivity?) -> [Double] {
        switch options.normalisation {
        case .none: return g.singularValues.map { $0 * $0 }
        case .matrix:
            let total = g.singularValues.reduce(0) { $0 + $1 * $1 }
            return g.singularValues.map { total > 0 ? $0 * $0 / total : 0 }
        case .layer:
            var e = [Double](repeating: 0, count: g.singularValues.count)
            for (p, layer) in g.layers.enumerated() {
                let row = g.layerEnergies[p], total = row.reduce(0, +)
                guard total > 0 else { continue }
                let w = (sensitivity?.weights[g.type.module(layer: layer)] ?? 1) / total
                for j in e.indices { e[j] += w * row[j] }
            }
            return e
        }
    }

    /// Chooses every group's rank (and, with several group sizes, which groups) for the budget
    /// (1 − ratio)·Σ d_in·d_out over the compressed matrices (`RankAllocator.covered`), and cuts
    /// the factors to it. Groups left dense keep their weights; groups not chosen are dropped.
    func allocate(_ all: [FactoredGroup], context: CompressionContext) throws(SheafError) -> (groups: [FactoredGroup], allocation: Allocation) {
        let c = context.config, t0 = monotonicSeconds()
        var sensitivity: Sensitivity?
        if options.allocation == .sensitivity {
            sensitivity = try Sensitivity.measure(
                groups: plan.tilings[plan.sizes.first!]!.map { all[$0] }, probeError: options.probeError, windows: options.probeWindows,
                context: context, key: "\(options.method.rawValue)|\(plan.sizes.first!)|\(options.shared.map(\.rawValue))|\(options.epsilon)")
        }
        let exact = all.map { weightedEnergies($0, sensitivity: sensitivity) }
        let items = zip(all, exact).map { g, e -> RankAllocator.Item in
            let (dOut, dIn) = g.type.shape(c), n = g.layers.count, fixed = options.rankOverrides[g.type]
            return .init(energies: RankAllocator.ironed(e), cost: dIn + n * dOut, fixed: fixed, denseCost: fixed == nil ? n * dOut * dIn : nil)
        }
        let dense = options.matrices.reduce(0) { $0 + $1.shape(c).dOut * $1.shape(c).dIn } * c.layerCount
        let budget = Int((Double(dense) * (1 - options.ratio)).rounded(.down))
        guard let picks = RankAllocator.covered(items, covers: plan.covers, budget: budget) else {
            throw .invalidArgument(op: "compress \(name)", detail: "--budget \(options.ratio) leaves fewer than one rank per matrix group: lower it")
        }
        func tail(_ i: Int, _ k: Int) -> Double { exact[i].dropFirst(k).reduce(0, +) }
        var chosen: [FactoredGroup] = [], denseGroups: [(MatrixType, [Int])] = [], spent = 0, discarded = 0.0
        for (i, pick) in picks.enumerated() {
            switch pick {
            case nil: continue
            case .dense?:
                denseGroups.append((all[i].type, all[i].layers))
                spent += items[i].denseCost!
            case .rank(let k)?:
                chosen.append(k < all[i].rank ? all[i].truncated(to: k) : all[i])
                spent += k * items[i].cost
                discarded += tail(i, k)
            }
        }
        let reference = plan.tilings[plan.sizes.contains(options.effectiveGroupSize) ? options.effectiveGroupSize : plan.sizes.first!]!
        let uniformDiscarded = reference.reduce(0.0) { sum, i in
            let g = plan.groups[i], (dOut, dIn) = g.type.shape(c)
            return sum + tail(i, max(1, options.rankOverrides[g.type] ?? MatrixType.rank(dIn: dIn, dOut: dOut, layers: g.layers.count, ratio: options.ratio)))
        }
        context.progress("\(options.allocation.rawValue) allocation: \(chosen.reduce(0) { $0 + $1.rank }) ranks over \(chosen.count) groups, "
            + "\(denseGroups.count) groups left dense, for \(budget) parameters")
        return (chosen, Allocation(
            budget: budget, spent: spent, denseGroups: denseGroups, discarded: discarded, uniformDiscarded: uniformDiscarded,
            sensitivity: sensitivity, seconds: monotonicSeconds() - t0))
    }

    /// One value per layer (rows) and compressed matrix type (columns) of the chosen groups.
    func layerMap(_ c: ModelConfig, _ value: (FactoredGroup, Int) -> Double) -> [[Double?]] {
        var values = [[Double?]](repeating: [Double?](repeating: nil, count: options.matrices.count), count: c.layerCount)
        for g in groups {
            guard let col = options.matrices.firstIndex(of: g.type) else { continue }
            for (p, l) in g.layers.enumerated() { values[l][col] = value(g, p) }
        }
        return values
    }

    func heatMap(_ c: ModelConfig, title: String, values: [[Double?]], colorTitle: String) -> SVG.HeatMap {
        var map = SVG.HeatMap(
            title: title, values: values, rowTitle: "layer", columnTitle: "matrix type", rowLabels: (0..<c.layerCount).map(String.init),
            columnLabels: options.matrices.map { String($0.rawValue.prefix { $0 != "_" }) }, colorTitle: colorTitle)
        let sizes = options.groupSizeCandidates.map(String.init).joined(separator: ",")
        map.subtitle = options.groupSizeCandidates.count > 1
            ? "bases over \(sizes) layers chosen per place for \(options.shared.map(\.rawValue).joined(separator: ", ")); normalisation \(options.normalisation.rawValue)"
            : "groups of \(sizes) layers share a basis for \(options.shared.map(\.rawValue).joined(separator: ", ")); normalisation \(options.normalisation.rawValue)"
        map.emptyLabel = "left dense"
        for g in groups where g.layers.count > 1 {
            guard let col = options.matrices.firstIndex(of: g.type) else { continue }
            for l in g.layers { map.dotted.insert([l, col]) }
        }
        if !map.dotted.isEmpty { map.dotLabel = "shares its basis with neighbouring layers" }
        return map
    }

    /// Rank kept per layer and matrix type, as a fraction of the group's full rank.
    func rankMap(_ c: ModelConfig) -> String {
        heatMap(
            c, title: "\(name): rank kept per matrix (\(options.allocation.rawValue) allocation, budget \(options.ratio))",
            values: layerMap(c) { g, _ in Double(g.rank) / Double(min(g.type.shape(c).dIn, g.layers.count * g.type.shape(c).dOut)) },
            colorTitle: "rank / full rank (unitless)"
        ).render()
    }

    /// Each layer's own relative calibration error ‖Xᵢ(Wᵢ − Ŵᵢ)ᵀ‖²/‖XᵢWᵢᵀ‖² at the kept rank.
    func errorMap(_ c: ModelConfig) -> String {
        heatMap(
            c, title: "\(name): calibration error left per matrix (\(options.allocation.rawValue) allocation, budget \(options.ratio))",
            values: layerMap(c) { g, p in log10(max(g.layerError(p, rank: g.rank), 1e-12)) },
            colorTitle: "log10 ‖X(W − Ŵ)ᵀ‖² / ‖XWᵀ‖²"
        ).render()
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
                "\(options.allocation.rawValue) allocation: \(a.spent) of \(a.budget) budgeted parameters, \(a.denseGroups.count) groups left dense "
                    + "(\(Set(a.denseGroups.map(\.type.rawValue)).sorted().joined(separator: ","))), \(options.normalisation.rawValue)-normalised error left \(scientific(a.discarded)) "
                    + "(uniform rule \(scientific(a.uniformDiscarded))), \(fixed(a.seconds)) s; maps \(Self.rankPictureName), \(Self.errorPictureName)")
            if options.groupSizeCandidates.count > 1 { notes.append("bases chosen: " + groupSizeSummary()) }
            if let s = a.sensitivity {
                notes.append(
                    "sensitivity: \(s.weights.count) probes on \(s.windows) windows \(s.fromCache ? "from the cache" : "in \(fixed(s.seconds)) s"), "
                        + "calibration loss \(String(format: "%.4f", s.baseLoss)) nats, KL(dense ‖ probe) per token per unit of relative error "
                        + "\(scientific(s.weights.values.min() ?? 0))…\(scientific(s.weights.values.max() ?? 0)); map \(Self.sensitivityPictureName)")
            }
        }
        if refit { notes.append("refit ridges \(refitRidges)") }
        let json: JSONValue = .object([
            "whitening_fallbacks": .int(fallbacks), "refit_ridges": refit ? .int(refitRidges) : .null,
            "allocation": allocation.map { a in
                .object([
                    "budget": .int(a.budget), "spent": .int(a.spent), "discarded": .number(a.discarded),
                    "uniform_discarded": .number(a.uniformDiscarded), "normalisation": .string(options.normalisation.rawValue),
                    "dense_groups": .array(a.denseGroups.map { .object(["type": .string($0.type.rawValue), "layers": .array($0.layers.map(JSONValue.int))]) }),
                    "seconds": .number(a.seconds), "sensitivity": a.sensitivity.map { $0.json } ?? .null,
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

    /// Per shared type, how many chosen groups span how many layers, and the layers left dense:
    /// "q_proj 1×6 2×12, k_proj 2×14 dense 2".
    func groupSizeSummary() -> String {
        options.matrices.filter { options.shared.contains($0) }.map { t in
            let sizes = Dictionary(grouping: groups.filter { $0.type == t }, by: \.layers.count).mapValues(\.count)
            let dense = allocation?.denseGroups.filter { $0.type == t }.reduce(0) { $0 + $1.layers.count } ?? 0
            return ([t.rawValue] + sizes.keys.sorted().map { "\($0)×\(sizes[$0]!)" } + (dense > 0 ? ["dense \(dense)"] : [])).joined(separator: " ")
        }.joined(separator: ", ")
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

    public enum Allocation: String, Sendable, CaseIterable { case uniform, spectrum, sensitivity }

    /// How an allocator weighs one group's error against another's (`weightedEnergies`).
    public enum Normalisation: String, Sendable, CaseIterable { case layer, matrix, none }

    public var method: WhitenedSVDMethod.Variant = .basisSharing
    /// Fraction of the decoder linear parameters to remove, in (0, 1).
    public var ratio: Double = 0.2
    /// Layers per shared basis; nil takes the method's default (2 for Basis Sharing, else 1).
    public var groupSize: Int?
    /// Several group sizes for the allocator to choose among (ascending, each dividing the next).
    public var groupSizes: [Int]?
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
    /// uniform: each group keeps `ratio`'s rank; spectrum: `RankAllocator` over the whitened
    /// spectra; sensitivity: the same with each matrix's error weighed by its measured loss growth.
    public var allocation: Allocation = .uniform
    /// `--normalise` as given; nil takes `normalisation`'s default.
    public var normalisationChoice: Normalisation?
    /// matrix for one group size (measured best on SmolLM2: Protocol S, r = 0.2, 121.44 against
    /// layer's 167.35), layer where group sizes are compared or sensitivities weigh each layer.
    public var normalisation: Normalisation {
        normalisationChoice ?? (groupSizeCandidates.count > 1 || allocation == .sensitivity ? .layer : .matrix)
    }
    /// Sensitivity probes: windows they run on, and the relative error each probe leaves. Two
    /// windows (1,024 tokens) gave Protocol S 61.79 at budget 0.2 on SmolLM2 (KL needs no label
    /// averaging); each more window adds one partial forward pass per matrix.
    public var probeWindows = 2
    public var probeError = 0.05
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
            guard let x = Normalisation(rawValue: v) else {
                throw MethodOptionError("--normalise must be one of \(Normalisation.allCases.map(\.rawValue).joined(separator: ", ")), got '\(v)'")
            }
            normalisationChoice = x
        }
        if let v = a.value("group-size") {
            let sizes = v.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !sizes.isEmpty, sizes.allSatisfy({ $0 != nil }) else {
                throw MethodOptionError("--group-size expects an integer or a list of them (1,2,4), got '\(v)'")
            }
            let unique = Array(Set(sizes.map { $0! })).sorted()
            if unique.count == 1 { groupSize = unique[0] } else { groupSizes = unique }
        }
        if let p = try a.int("probe-windows") { probeWindows = p }
        if let e = try a.double("probe-error", expecting: "a number in (0, 1)") { probeError = e }
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
    /// The group sizes the plan factors: the list, or the one size.
    public var groupSizeCandidates: [Int] { groupSizes ?? [effectiveGroupSize] }
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
        let sizes = o.groupSizeCandidates
        for n in sizes where n < 1 || n > c.layerCount {
            throw .invalidArgument(op: "compress", detail: "--group-size must be between 1 and the model's \(c.layerCount) layers, got \(n)")
        }
        if o.method == .svdLLM, let n = sizes.first(where: { $0 != 1 }) {
            throw .invalidArgument(op: "compress", detail: "svd-llm factors each matrix alone (group size 1); use basis-sharing for --group-size \(n)")
        }
        if sizes.count > 1 {
            guard o.allocation != .uniform else {
                throw .invalidArgument(op: "compress", detail: "--group-size \(sizes.map(String.init).joined(separator: ",")) leaves the choice to an allocator: add --allocate spectrum or sensitivity")
            }
            guard o.normalisation != .matrix else {
                throw .invalidArgument(op: "compress", detail: "--normalise matrix counts a group once whatever its size, so it cannot compare group sizes: use layer")
            }
            if let (a, b) = zip(sizes, sizes.dropFirst()).first(where: { $1 % $0 != 0 }) {
                throw .invalidArgument(op: "compress", detail: "--group-size \(sizes.map(String.init).joined(separator: ",")): each size must divide the next (\(a) does not divide \(b))")
            }
        }
        if o.allocation == .sensitivity {
            guard o.normalisation == .layer else {
                throw .invalidArgument(op: "compress", detail: "--allocate sensitivity weighs each layer's relative error: it needs --normalise layer")
            }
            guard o.probeWindows >= 1 else { throw .invalidArgument(op: "compress", detail: "--probe-windows must be at least 1, got \(o.probeWindows)") }
            guard o.probeError > 0, o.probeError < 1 else { throw .invalidArgument(op: "compress", detail: "--probe-error must be in (0, 1), got \(o.probeError)") }
        }
        var groups: [Group] = [], index: [String: Int] = [:]
        var tilings: [Int: [Int]] = [:]
        for t in o.matrices {
            let (dOut, dIn) = t.shape(c)
            for n in sizes {
                let size = o.shared.contains(t) ? n : 1
                for start in stride(from: 0, to: c.layerCount, by: size) {
                    let layers = Array(start..<min(start + size, c.layerCount))
                    // The same layers under another candidate size are the same group.
                    if let known = index["\(t.rawValue)|\(layers)"] {
                        tilings[n, default: []].append(known)
                        continue
                    }
                    // An allocator factors at full rank and truncates once every spectrum is known.
                    var rank = o.allocation != .uniform
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
                    index["\(t.rawValue)|\(layers)"] = groups.count
                    tilings[n, default: []].append(groups.count)
                    groups.append(Group(type: t, layers: layers, rank: rank))
                }
            }
        }
        self.groups = groups
        self.sizes = sizes
        self.tilings = tilings
        // Per type, blocks of the largest size, each split into the next smaller size's groups.
        func cover(_ t: MatrixType, _ layers: Range<Int>, below: Int) -> RankAllocator.Cover {
            let item = index["\(t.rawValue)|\(Array(layers))"]!
            for n in sizes.prefix(below).reversed() where n < layers.count {
                let parts = stride(from: layers.lowerBound, to: layers.upperBound, by: n).map { start in
                    cover(t, start..<min(start + n, layers.upperBound), below: sizes.firstIndex(of: n)!)
                }
                return .init(item: item, parts: parts)
            }
            return .init(item: item)
        }
        covers = o.matrices.flatMap { t in
            let top = o.shared.contains(t) ? sizes.last! : 1
            return stride(from: 0, to: c.layerCount, by: top).map { cover(t, $0..<min($0 + top, c.layerCount), below: sizes.count) }
        }
    }

    /// The candidate group sizes, ascending.
    public let sizes: [Int]
    /// Per candidate size, the groups that cover every compressed (type, layer) once with that
    /// size (types that do not share: single layers).
    public let tilings: [Int: [Int]]
    /// How the allocator may cover each type's layers (`RankAllocator.covered`).
    public let covers: [RankAllocator.Cover]

    /// The last layer of the group of type `t` that holds layer `i`.
    func groupEnd(_ t: MatrixType, layer i: Int) -> Int {
        // A type left dense needs no Gram beyond its own layer.
        groups.filter { $0.type == t && $0.layers.contains(i) }.map { $0.layers.last! }.max() ?? i
    }
}
