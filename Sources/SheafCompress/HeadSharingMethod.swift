import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// Head-wise shareable attention (Cao et al., 2024, arXiv 2402.11819): an attention head reuses
/// the weights of the most similar head of an earlier layer.
/// - DirectShare: the replaced head reads the reference head's rows of W_q, W_k, W_v and its
///   columns of W_o, as they are.
/// - PostShare (here, layer-wise in closed form): after choosing the same pairs, each shared
///   copy is fitted to every place it serves, W = (Σ_p W_p·G_p)(Σ_p G_p)⁻¹ with G_p the
///   calibration Gram of head p's input, minimising Σ_p ‖X_p(W − W_p)ᵀ‖². The paper's own
///   PostShare fine-tunes the whole model with a similarity penalty; that is not this.
///
/// The sharing unit is a key/value group (its k and v rows, the rows of its query heads and
/// their o columns: a replacement never splits a group under grouped-query attention), or,
/// with `--unit query-head`, one query head (its q rows and o columns; k and v stay).
/// Every module with a borrowed or lent head is stored as "head-shared": its own heads once,
/// the borrowed ones as references to the lender's tensor, so nothing is stored twice.
public final class HeadSharingMethod: CompressionMethod {
    public enum Unit: String, Sendable, CaseIterable {
        case kvGroup = "kv-group", queryHead = "query-head"
    }

    /// Which weights make a unit's signature (its key/value group's k and v rows for a query head).
    public enum Signature: String, Sendable, CaseIterable {
        case q, k, v, qk, qkv
        var types: [MatrixType] {
            switch self {
            case .q: [.q]
            case .k: [.k]
            case .v: [.v]
            case .qk: [.q, .k]
            case .qkv: [.q, .k, .v]
            }
        }
    }

    public struct Options: Sendable {
        public var shareRate = 0.1
        public var signature = Signature.qk
        public var unit = Unit.kvGroup
        /// PostShare: fit each shared copy to the heads it serves.
        public var fitted = false
        /// The whitening's fallback shift for a Gram sum that is not positive definite.
        public var epsilon = 1e-6
        public init() {}
    }

    public static let options: [MethodOption] = [
        .init("share-rate", value: "R", help: """
            fraction of all units (layers × units per layer) that read an earlier layer's
            weights instead of their own, in [0, 1) (default 0.1); layer 0 never does.
            """),
        .init("signature", value: "S", help: "weights compared by cosine similarity: qk (default), q, k, v or qkv\n(a query head's k and v are its key/value group's)."),
        .init("unit", value: "U", help: """
            kv-group (default): a key/value group shares its k, v rows, its query heads' q rows
            and o columns; query-head: one query head shares its q rows and o columns.
            """),
    ]

    public static let entries: [MethodEntry] = [
        MethodEntry(
            name: "directshare", summary: "attention heads reuse the most similar earlier layer's head weights (Cao et al., 2024)", options: options,
            budget: { r, a, c in try budgetArguments(r, a, c) }
        ) { a, config in try HeadSharingMethod(options: try parse(a, fitted: false), config: config) },
        MethodEntry(
            name: "postshare", summary: "directshare's pairs, each shared head fitted in closed form to every head it serves", options: options,
            budget: { r, a, c in try budgetArguments(r, a, c) }
        ) { a, config in try HeadSharingMethod(options: try parse(a, fitted: true), config: config) },
    ]

    /// The share rate that removes the fraction R of the linear parameters: R · linear /
    /// (parameters per unit · units), for the unit the other arguments choose.
    static func budgetArguments(_ r: Double, _ a: MethodArguments, _ c: ModelConfig) throws -> MethodArguments {
        let probe = try HeadSharingMethod(options: try parse(a, fitted: false), config: c)
        let rate = r * Double(c.linearParameterCount) / Double(probe.unitParameters * c.layerCount * probe.unitsPerLayer)
        guard rate < 1 else {
            throw SheafError.invalidArgument(
                op: "sweep", detail: "a budget of \(r) needs share rate \(String(format: "%.3f", rate)) (≥ 1): head sharing removes at most the attention's parameters")
        }
        var out = a
        out.values["share-rate"] = ["\(rate)"]
        return out
    }

    static func parse(_ a: MethodArguments, fitted: Bool) throws(MethodOptionError) -> Options {
        var o = Options()
        o.fitted = fitted
        if let r = try a.double("share-rate", expecting: "a number in [0, 1)") { o.shareRate = r }
        if let s = a.value("signature") {
            guard let sig = Signature(rawValue: s) else {
                throw MethodOptionError("--signature must be one of \(Signature.allCases.map(\.rawValue).joined(separator: ", ")), got '\(s)'")
            }
            o.signature = sig
        }
        if let u = a.value("unit") {
            guard let unit = Unit(rawValue: u) else {
                throw MethodOptionError("--unit must be one of \(Unit.allCases.map(\.rawValue).joined(separator: ", ")), got '\(u)'")
            }
            o.unit = unit
        }
        return o
    }

    public let options: Options
    let config: ModelConfig
    /// q, k, v, o of every layer, as read (PostShare needs them all at the end; 3.5 MB per
    /// SmolLM2 layer).
    private var weights: [[MatrixType: Matrix<Float>]] = []
    /// Per layer: the attention-input Gram (q, k, v) and the attention-output Gram (o).
    private var grams: [[LinearInput: Matrix<Double>]] = []

    public init(options: Options, config: ModelConfig) throws(SheafError) {
        let op = "compress \(options.fitted ? "postshare" : "directshare")"
        guard options.shareRate >= 0, options.shareRate < 1 else {
            throw .invalidArgument(op: op, detail: "--share-rate must be in [0, 1), got \(options.shareRate)")
        }
        guard config.layerCount >= 2 else {
            throw .invalidArgument(op: op, detail: "the model has \(config.layerCount) layer: head sharing needs an earlier layer to share from")
        }
        guard config.headCount > 0, config.hiddenSize % config.headCount == 0 else {
            throw .invalidArgument(op: op, detail: "num_attention_heads \(config.headCount) does not divide hidden_size \(config.hiddenSize)")
        }
        self.options = options
        self.config = config
    }

    public var name: String { options.fitted ? "postshare" : "directshare" }
    public var statistics: CalibrationStatistics { options.fitted ? .inputGrams : .none }
    public var requestedRatio: Double? { nil }
    public var recordedOptions: JSONValue {
        .object([
            "share_rate": .number(options.shareRate), "signature": .string(options.signature.rawValue), "unit": .string(options.unit.rawValue),
            "epsilon": .number(options.epsilon),
        ])
    }

    static let attentionTypes: [MatrixType] = [.q, .k, .v, .o]

    public func layerReady(_ layer: Int, grams layerGrams: [LinearInput: Matrix<Double>]?, context: CompressionContext) throws(SheafError) {
        var w: [MatrixType: Matrix<Float>] = [:]
        for t in Self.attentionTypes { w[t] = try context.weight(t, layer: layer) }
        weights.append(w)
        if options.fitted {
            guard let g = layerGrams, let a = g[.attention], let o = g[.attentionOutput] else {
                throw .invalidArgument(op: "compress postshare", detail: "needs the calibration Grams of layer \(layer)")
            }
            grams.append([.attention: a, .attentionOutput: o])
        }
    }

    // MARK: units

    /// A sharing unit: (layer, index of its group or query head).
    public struct UnitID: Hashable, Sendable, Comparable, CustomStringConvertible {
        public var layer: Int
        public var index: Int
        public static func < (a: Self, b: Self) -> Bool { (a.layer, a.index) < (b.layer, b.index) }
        public var description: String { "\(layer)/\(index)" }
    }

    var unitsPerLayer: Int { options.unit == .kvGroup ? config.kvHeadCount : config.headCount }
    var queriesPerGroup: Int { config.headCount / config.kvHeadCount }

    /// The heads of `type` (in its `headSlices`) that unit `index` covers; empty when the unit
    /// does not share that matrix (k and v of a query head).
    func heads(of type: MatrixType, unit index: Int) -> Range<Int> {
        switch (options.unit, type) {
        case (.kvGroup, .q), (.kvGroup, .o): index * queriesPerGroup..<(index + 1) * queriesPerGroup
        case (.kvGroup, _): index..<index + 1
        case (.queryHead, .q), (.queryHead, .o): index..<index + 1
        case (.queryHead, _): 0..<0
        }
    }

    /// The heads of `type` whose weights make unit `index`'s signature (a query head's k and v
    /// are its group's).
    func signatureHeads(of type: MatrixType, unit index: Int) -> Range<Int> {
        if options.unit == .queryHead, type == .k || type == .v {
            let g = index / queriesPerGroup
            return g..<g + 1
        }
        return heads(of: type, unit: index)
    }

    /// Rows `heads` (each head_dim wide) of a q/k/v weight, as one (rows, dIn) matrix.
    func rowBlock(_ w: Matrix<Float>, _ heads: Range<Int>) -> Matrix<Double> {
        let hd = config.headDim, r0 = heads.lowerBound * hd, n = heads.count * hd
        return Matrix(unchecked: n, w.cols, (0..<n * w.cols).map { Double(w.values[r0 * w.cols + $0]) })
    }

    /// Columns `heads` of an o weight, as one (dOut, columns) matrix.
    func columnBlock(_ w: Matrix<Float>, _ heads: Range<Int>) -> Matrix<Double> {
        let hd = config.headDim, c0 = heads.lowerBound * hd, n = heads.count * hd
        var m = Matrix<Double>.zeros(rows: w.rows, cols: n)
        for o in 0..<w.rows { for j in 0..<n { m[o, j] = Double(w[o, c0 + j]) } }
        return m
    }

    // MARK: finish

    public func finish(context: CompressionContext) throws(SheafError) -> MethodOutput {
        let layers = config.layerCount, perLayer = unitsPerLayer
        let units = (0..<layers).flatMap { l in (0..<perLayer).map { UnitID(layer: l, index: $0) } }
        context.progress("\(name): cosine similarity of \(units.count) \(options.unit == .kvGroup ? "key/value groups" : "query heads") (signature \(options.signature.rawValue))")
        let similarity = try similarities(units)
        func sim(_ a: UnitID, _ b: UnitID) -> Double { similarity[a.layer * perLayer + a.index, b.layer * perLayer + b.index] }

        // Each unit's best match among earlier layers.
        var best: [UnitID: (match: UnitID, similarity: Double)] = [:]
        for u in units where u.layer >= 1 {
            var top: (UnitID, Double)?
            for r in units where r.layer < u.layer { if top == nil || sim(u, r) > top!.1 { top = (r, sim(u, r)) } }
            best[u] = top!
        }

        // Greedy: the most similar (unit, earlier reference) pair first; a replaced unit is never
        // a reference and a reference is never replaced, so every borrowed head is an original.
        // Without conflicts this is the paper's "sort by best similarity, replace the top".
        let asked = Int((options.shareRate * Double(layers * perLayer)).rounded(.down))
        var reference: [UnitID: UnitID] = [:], lenders = Set<UnitID>()
        while reference.count < asked {
            var pick: (UnitID, UnitID, Double)?
            for u in units where u.layer >= 1 && reference[u] == nil && !lenders.contains(u) {
                for r in units where r.layer < u.layer && reference[r] == nil {
                    if pick == nil || sim(u, r) > pick!.2 { pick = (u, r, sim(u, r)) }
                }
            }
            guard let (u, r, _) = pick else { break }
            reference[u] = r
            lenders.insert(r)
        }

        // The weights each lender's shared copy takes: its own (DirectShare) or fitted (PostShare).
        var copies: [UnitID: [MatrixType: Matrix<Double>]] = [:]
        var fits: [JSONValue] = []
        var fallbacks = 0
        var totals = (directRows: 0.0, fittedRows: 0.0, directColumns: 0.0, fittedColumns: 0.0, rowEnergy: 0.0, columnEnergy: 0.0)
        for r in lenders.sorted() {
            let served = [r] + reference.filter { $0.value == r }.map(\.key).sorted()
            var copy: [MatrixType: Matrix<Double>] = [:]
            for t in Self.attentionTypes where !heads(of: t, unit: r.index).isEmpty {
                copy[t] = t == .o ? columnBlock(weights[r.layer][t]!, heads(of: t, unit: r.index)) : rowBlock(weights[r.layer][t]!, heads(of: t, unit: r.index))
            }
            if options.fitted {
                let fit = try fitCopy(served)
                fallbacks += fit.fallbacks
                for (t, m) in fit.copy { copy[t] = m }
                totals.directRows += fit.rows.direct
                totals.fittedRows += fit.rows.fitted
                totals.directColumns += fit.columns.direct
                totals.fittedColumns += fit.columns.fitted
                totals.rowEnergy += fit.rows.energy
                totals.columnEnergy += fit.columns.energy
                fits.append(.object([
                    "reference": unitJSON(r), "serves": .array(served.map(unitJSON)),
                    "rows_error_direct": .number(fit.rows.direct / fit.rows.energy), "rows_error_fitted": .number(fit.rows.fitted / fit.rows.energy),
                    "columns_error_direct": .number(fit.columns.direct / fit.columns.energy),
                    "columns_error_fitted": .number(fit.columns.fitted / fit.columns.energy), "fallback_shifts": .int(fit.fallbacks),
                    "served_relative_errors": .array(zip(served, fit.perUnit).map { u, e in
                        .object([
                            "unit": unitJSON(u), "rows_direct": .number(e.rowsDirect), "rows_fitted": .number(e.rowsFitted),
                            "columns_direct": .number(e.columnsDirect), "columns_fitted": .number(e.columnsFitted),
                        ])
                    }),
                ]))
            }
            copies[r] = copy
        }

        let (modules, tensors) = try storage(reference: reference, lenders: lenders, copies: copies)
        let saved = reference.count * unitParameters

        // The report: one row per unit of layers ≥ 1.
        let unitName = options.unit == .kvGroup ? "kv group" : "query head"
        var rows: [[String]] = [], unitRows: [JSONValue] = []
        for u in units {
            guard let b = best[u] else {
                unitRows.append(.object(["layer": .int(u.layer), "index": .int(u.index), "best": .null, "replaced": .bool(false)]))
                continue
            }
            let by = reference[u]
            rows.append([u.description, b.match.description, String(format: "%.4f", b.similarity), by.map { "yes, by \($0) (\(String(format: "%.4f", sim(u, $0))))" } ?? (lenders.contains(u) ? "lends" : "-")])
            unitRows.append(.object([
                "layer": .int(u.layer), "index": .int(u.index), "best": unitJSON(b.match), "similarity": .number(b.similarity),
                "replaced": .bool(by != nil), "reference": by.map(unitJSON) ?? .null,
                "reference_similarity": by.map { .number(sim(u, $0)) } ?? .null, "lends": .bool(lenders.contains(u)),
            ]))
        }
        let linear = Double(config.linearParameterCount)
        var notes = [
            "replaced \(reference.count) of \(units.count) \(unitName)s (share rate \(options.shareRate) asks \(asked)"
                + (reference.count < asked ? "; no more pairs without replacing a reference" : "") + ")",
            "parameters saved \(saved) (\(String(format: "%.2f", 100 * Double(saved) / linear))% of the linear layers; \(unitParameters) per \(unitName))",
        ]
        if options.fitted {
            notes.append(
                "PostShare fit: calibration-weighted error of the shared copies q,k,v rows \(scientific(totals.fittedRows / max(totals.rowEnergy, .leastNonzeroMagnitude))) "
                    + "(DirectShare's copies \(scientific(totals.directRows / max(totals.rowEnergy, .leastNonzeroMagnitude)))), o columns "
                    + "\(scientific(totals.fittedColumns / max(totals.columnEnergy, .leastNonzeroMagnitude))) (DirectShare \(scientific(totals.directColumns / max(totals.columnEnergy, .leastNonzeroMagnitude)))); "
                    + "fallback shifts \(fallbacks)")
        }
        var json: [String: JSONValue] = [
            "unit": .string(options.unit.rawValue), "signature": .string(options.signature.rawValue), "share_rate": .number(options.shareRate),
            "asked": .int(asked), "replaced": .int(reference.count), "parameters_saved": .int(saved), "unit_parameters": .int(unitParameters),
            "units": .array(unitRows), "picture": .string(Self.pictureName),
        ]
        if options.fitted {
            json["fits"] = .array(fits)
            json["fallback_shifts"] = .int(fallbacks)
            json["rows_error_direct"] = .number(totals.directRows / max(totals.rowEnergy, .leastNonzeroMagnitude))
            json["rows_error_fitted"] = .number(totals.fittedRows / max(totals.rowEnergy, .leastNonzeroMagnitude))
            json["columns_error_direct"] = .number(totals.directColumns / max(totals.columnEnergy, .leastNonzeroMagnitude))
            json["columns_error_fitted"] = .number(totals.fittedColumns / max(totals.columnEnergy, .leastNonzeroMagnitude))
        }
        notes.append("heat map: \(Self.pictureName) in the output folder")
        let report = MethodReport(columns: [options.unit == .kvGroup ? "layer/group" : "layer/head", "best match", "similarity", "replaced"], rows: rows, notes: notes, json: .object(json))
        let picture = heatMap(units: units, best: best, reference: reference, asked: asked)
        return MethodOutput(modules: modules, tensors: tensors, report: report, files: [Self.pictureName: Data(picture.utf8)])
    }

    public static let pictureName = "head-similarity.svg"

    func unitJSON(_ u: UnitID) -> JSONValue { .object(["layer": .int(u.layer), "index": .int(u.index)]) }

    /// Parameters a replaced unit stops storing: its heads' rows of q (and k, v) and o's columns.
    var unitParameters: Int {
        Self.attentionTypes.reduce(0) { sum, t in
            let (dOut, dIn) = t.shape(config)
            return sum + heads(of: t, unit: 0).count * config.headDim * (t == .o ? dOut : dIn)
        }
    }

    /// Cosine similarity of every pair of units' signatures: (units, units), Float64.
    func similarities(_ units: [UnitID]) throws(SheafError) -> Matrix<Double> {
        var rows: [[Double]] = []
        for u in units {
            var v: [Double] = []
            for t in options.signature.types {
                v += rowBlock(weights[u.layer][t]!, signatureHeads(of: t, unit: u.index)).values
            }
            let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            rows.append(norm > 0 ? v.map { $0 / norm } : v)
        }
        let s = Matrix(unchecked: units.count, rows[0].count, rows.flatMap { $0 })
        return try LAPACK.multiply(s, s, transposeB: true)
    }

    struct Fit {
        var copy: [MatrixType: Matrix<Double>]
        /// Σ_p tr((W − W_p)·G_p·(W − W_p)ᵀ) for DirectShare's copy (W = the reference's) and the
        /// fitted one, and Σ_p tr(W_p·G_p·W_pᵀ), for the q/k/v rows and the o columns.
        var rows: (direct: Double, fitted: Double, energy: Double)
        var columns: (direct: Double, fitted: Double, energy: Double)
        /// Per served unit, its own relative error ‖X_p(W − W_p)ᵀ‖²/‖X_p W_pᵀ‖² with either copy:
        /// the sums above are led by the units whose inputs are largest.
        var perUnit: [(rowsDirect: Double, rowsFitted: Double, columnsDirect: Double, columnsFitted: Double)]
        var fallbacks: Int
    }

    /// PostShare's closed form for a reference and the units it serves (the reference first).
    /// Rows (q, k, v, which read the attention input): W = (Σ_p W_p·G_p)(Σ_p G_p)⁻¹, solved as
    /// (Σ G_p)·Wᵀ = Σ G_p·W_pᵀ by Cholesky. Columns of o: the same with G_p the Gram of head p's
    /// slice of the attention output.
    func fitCopy(_ served: [UnitID]) throws(SheafError) -> Fit {
        let r = served[0]
        let rowTypes = Self.attentionTypes.filter { $0 != .o && !heads(of: $0, unit: r.index).isEmpty }
        func stackedRows(_ u: UnitID) -> Matrix<Double> {
            let blocks = rowTypes.map { rowBlock(weights[u.layer][$0]!, heads(of: $0, unit: u.index)) }
            return Matrix(unchecked: blocks.reduce(0) { $0 + $1.rows }, blocks[0].cols, blocks.flatMap(\.values))
        }
        func oSlice(_ u: UnitID) -> Range<Int> {
            let h = heads(of: .o, unit: u.index)
            return h.lowerBound * config.headDim..<h.upperBound * config.headDim
        }
        func sliceGram(_ u: UnitID) -> Matrix<Double> {
            let g = grams[u.layer][.attentionOutput]!, s = oSlice(u)
            var m = Matrix<Double>.zeros(rows: s.count, cols: s.count)
            for i in 0..<s.count { for j in 0..<s.count { m[i, j] = g[s.lowerBound + i, s.lowerBound + j] } }
            return m
        }
        // (W_p, G_p) per served unit: W_p (n, d) against G_p (d, d), for the rows and the columns.
        let rowTerms = served.map { (stackedRows($0), grams[$0.layer][.attention]!) }
        let columnTerms = served.map { (columnBlock(weights[$0.layer][.o]!, heads(of: .o, unit: $0.index)), sliceGram($0)) }
        var fallbacks = 0
        func solve(_ terms: [(Matrix<Double>, Matrix<Double>)]) throws(SheafError)
            -> (fitted: Matrix<Double>, direct: Double, error: Double, energy: Double, perUnit: [(direct: Double, fitted: Double)])
        {
            var sum = terms[0].1, rhs = try LAPACK.multiply(terms[0].1, terms[0].0, transposeB: true)  // G·Wᵀ: (d, n)
            for (w, g) in terms.dropFirst() {
                for i in 0..<sum.count { sum.values[i] += g.values[i] }
                let p = try LAPACK.multiply(g, w, transposeB: true)
                for i in 0..<rhs.count { rhs.values[i] += p.values[i] }
            }
            let (x, shift) = try LAPACK.solvePositiveDefinite(sum, rhs, epsilon: options.epsilon)
            if shift != 0 { fallbacks += 1 }
            let fitted = x.transposed
            var direct = 0.0, error = 0.0, energy = 0.0
            var perUnit: [(direct: Double, fitted: Double)] = []
            for (w, g) in terms {
                let own = try WhitenedSVD.quadraticTrace(w, g)
                energy += own
                var pair = (direct: 0.0, fitted: 0.0)
                for (copy, into) in [(terms[0].0, 0), (fitted, 1)] {
                    var d = copy
                    for i in 0..<d.count { d.values[i] -= w.values[i] }
                    let e = max(0, try WhitenedSVD.quadraticTrace(d, g))
                    if into == 0 { direct += e; pair.direct = e / own } else { error += e; pair.fitted = e / own }
                }
                perUnit.append(pair)
            }
            return (fitted, direct, error, energy, perUnit)
        }
        let rows = try solve(rowTerms), columns = try solve(columnTerms)
        // Split the stacked rows back into q, k, v.
        var copy: [MatrixType: Matrix<Double>] = [.o: columns.fitted]
        var start = 0
        for t in rowTypes {
            let n = heads(of: t, unit: r.index).count * config.headDim
            copy[t] = Self.rows(rows.fitted, start..<start + n)
            start += n
        }
        return Fit(
            copy: copy, rows: (rows.direct, rows.error, rows.energy), columns: (columns.direct, columns.error, columns.energy),
            perUnit: zip(rows.perUnit, columns.perUnit).map { ($0.0.direct, $0.0.fitted, $0.1.direct, $0.1.fitted) }, fallbacks: fallbacks)
    }

    /// The modules and tensors: every q/k/v/o module with a replaced or lent head becomes
    /// "head-shared"; its own heads (lent ones as their shared copy) go into "<module>.heads".
    func storage(
        reference: [UnitID: UnitID], lenders: Set<UnitID>, copies: [UnitID: [MatrixType: Matrix<Double>]]
    ) throws(SheafError) -> ([String: CompressedManifest.Module], [(name: String, value: Matrix<Float>)]) {
        let hd = config.headDim
        var modules: [String: CompressedManifest.Module] = [:]
        var tensors: [(name: String, value: Matrix<Float>)] = []
        for l in 0..<config.layerCount {
            for t in Self.attentionTypes {
                let count = t.headSlices(config)!.count
                // Per head: the unit it belongs to (nil: not in any unit of this type).
                func unit(ofHead h: Int) -> UnitID? {
                    (0..<unitsPerLayer).first { heads(of: t, unit: $0).contains(h) }.map { UnitID(layer: l, index: $0) }
                }
                let involved = (0..<count).contains { h in unit(ofHead: h).map { reference[$0] != nil || lenders.contains($0) } ?? false }
                guard involved else { continue }
                let module = t.module(layer: l), ownName = module + ".heads"
                let w = weights[l][t]!
                var own: [Matrix<Double>] = []
                var sources: [CompressedManifest.HeadSource] = []
                // First pass: own heads in order (their block index in the own tensor).
                var ownIndex: [Int: Int] = [:]
                for h in 0..<count where unit(ofHead: h).flatMap({ reference[$0] }) == nil {
                    ownIndex[h] = own.count
                    let u = unit(ofHead: h)
                    if let u, let copy = copies[u]?[t] {
                        // A lent head: its block of the unit's shared copy.
                        let k = h - heads(of: t, unit: u.index).lowerBound
                        own.append(t == .o ? Self.columns(copy, k * hd..<(k + 1) * hd) : Self.rows(copy, k * hd..<(k + 1) * hd))
                    } else {
                        own.append(t == .o ? columnBlock(w, h..<h + 1) : rowBlock(w, h..<h + 1))
                    }
                }
                for h in 0..<count {
                    if let u = unit(ofHead: h), let r = reference[u] {
                        // The same position in the reference unit, in the lender's own tensor.
                        let k = h - heads(of: t, unit: u.index).lowerBound
                        let lenderHead = heads(of: t, unit: r.index).lowerBound + k
                        let slice = try lenderSlice(t, layer: r.layer, head: lenderHead, reference: reference)
                        sources.append(.init(tensor: t.module(layer: r.layer) + ".heads", slice: slice))
                    } else {
                        sources.append(.init(tensor: ownName, slice: ownIndex[h]!))
                    }
                }
                var entry = CompressedManifest.Module(kind: HeadSharedKind.kindName, tensors: [:], heads: sources)
                if !own.isEmpty {
                    entry.tensors["own"] = ownName
                    tensors.append((ownName, (t == .o ? Self.joinColumns(own) : Self.joinRows(own)).asFloat))
                }
                modules[module] = entry
            }
        }
        return (modules, tensors)
    }

    /// Where head `head` of `type` in `layer` sits in that module's own tensor: its rank among
    /// the module's heads that are not replaced.
    func lenderSlice(_ type: MatrixType, layer: Int, head: Int, reference: [UnitID: UnitID]) throws(SheafError) -> Int {
        var slice = 0
        for h in 0..<head {
            let u = (0..<unitsPerLayer).first { heads(of: type, unit: $0).contains(h) }.map { UnitID(layer: layer, index: $0) }
            if u.flatMap({ reference[$0] }) == nil { slice += 1 }
        }
        return slice
    }

    static func rows(_ m: Matrix<Double>, _ r: Range<Int>) -> Matrix<Double> {
        Matrix(unchecked: r.count, m.cols, Array(m.values[r.lowerBound * m.cols..<r.upperBound * m.cols]))
    }

    static func columns(_ m: Matrix<Double>, _ c: Range<Int>) -> Matrix<Double> {
        var out = Matrix<Double>.zeros(rows: m.rows, cols: c.count)
        for i in 0..<m.rows { for j in 0..<c.count { out[i, j] = m[i, c.lowerBound + j] } }
        return out
    }

    static func joinRows(_ blocks: [Matrix<Double>]) -> Matrix<Double> {
        Matrix(unchecked: blocks.reduce(0) { $0 + $1.rows }, blocks[0].cols, blocks.flatMap(\.values))
    }

    static func joinColumns(_ blocks: [Matrix<Double>]) -> Matrix<Double> {
        let total = blocks.reduce(0) { $0 + $1.cols }
        var out = Matrix<Double>.zeros(rows: blocks[0].rows, cols: total)
        var c0 = 0
        for b in blocks {
            for i in 0..<b.rows { for j in 0..<b.cols { out[i, c0 + j] = b[i, j] } }
            c0 += b.cols
        }
        return out
    }

    /// Best-match similarity per layer (rows) and unit (columns), replaced units crossed out.
    func heatMap(units: [UnitID], best: [UnitID: (match: UnitID, similarity: Double)], reference: [UnitID: UnitID], asked: Int) -> String {
        let unitName = options.unit == .kvGroup ? "key/value group" : "query head"
        var map = SVG.HeatMap(
            title: "\(name): best-match cosine similarity per \(unitName)",
            values: (0..<config.layerCount).map { l in (0..<unitsPerLayer).map { best[UnitID(layer: l, index: $0)]?.similarity } },
            rowTitle: "layer", columnTitle: unitName + " index", rowLabels: (0..<config.layerCount).map(String.init),
            columnLabels: (0..<unitsPerLayer).map(String.init), colorTitle: "cosine similarity (unitless)")
        map.subtitle = "signature \(options.signature.rawValue), share rate \(options.shareRate); similarity to the most similar \(unitName) of any earlier layer"
        map.marked = Set(reference.keys.map { [$0.layer, $0.index] })
        map.markLabel = "replaced: reads an earlier layer's weights (\(reference.count) of \(units.count); \(asked) asked)"
        map.dotted = Set(reference.values.map { [$0.layer, $0.index] })
        map.dotLabel = "lends its weights to later layers' \(unitName)s (\(Set(reference.values).count))"
        map.emptyLabel = "layer 0: no earlier layer, never replaced"
        return map.render()
    }
}
