import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// SWSC (Zeng et al., 2025, arXiv 2501.08631): K-means clusters a matrix's channels, each
/// channel is replaced by its cluster's centroid (W' = C[label]), and the top-r SVD of the error
/// E = W − W' compensates: W ≈ W' + U_r·Σ_r·V_rᵀ. Beyond the paper, as options: the residual's
/// SVD whitened by the calibration Gram (as SVD-LLM does), and the distance weighted by the
/// Gram's diagonal. Stores each module as "clustered-rows" or "clustered-cols" with F16
/// centroids and residual factors and U8/U16 labels.
public final class SWSCMethod: CompressionMethod {
    public enum DataAware: String, Sendable, CaseIterable {
        case none, compensation, clustering, both
        var compensation: Bool { self == .compensation || self == .both }
        var clustering: Bool { self == .clustering || self == .both }
    }

    /// Clusters and residual rank of one matrix type.
    public struct Choice: Sendable, Equatable {
        public var clusters: Int
        public var rank: Int
    }

    public struct Options: Sendable {
        public var matrices: [MatrixType] = MatrixType.allCases
        public var channels: ClusteredLinear.Channels = .rows
        /// Either explicit clusters and rank, or a bit budget.
        public var clusters: Int?
        public var rank: Int?
        public var bits: Double?
        /// The fraction of a `bits` budget spent on centroids and labels; the rest buys rank.
        public var clusterShare = 0.5
        public var dataAware: DataAware = .none
        public var seed: UInt64 = 0
        public var maxIterations = 50
        public var tolerance = 1e-4
        public var epsilon = 1e-6
        public init() {}
    }

    public static let options: [MethodOption] = [
        .init("clusters", value: "K", help: "clusters per matrix: 1 ≤ K ≤ its channel count."),
        .init("residual-rank", value: "R", help: "rank of the SVD error compensation, 0 ≤ R ≤ min(d_in, d_out), or full (default 0)."),
        .init("bits", value: "B", help: """
            choose K and R per matrix type for B average bits per weight instead:
            the largest K whose centroids (16-bit) and labels (⌈log₂ K⌉ bits) fit
            in the cluster share of the budget, then the largest R whose 16-bit
            factors fit in the rest.
            """),
        .init("cluster-share", value: "F", help: "with --bits: the fraction spent on clusters, in (0, 1] (default 0.5)."),
        .init("matrices", value: "LIST", help: "matrix types to compress: all (default) or e.g. q,k; the rest stay dense."),
        .init("channels", value: "rows|cols", help: "cluster output channels (rows, default) or input channels (cols)."),
        .init("data-aware", value: "MODE", help: """
            none (default, the paper), compensation (the residual's SVD whitened
            by the calibration Gram), clustering (distances weighted by the Gram's
            diagonal; rows only) or both.
            """),
        .init("seed", value: "S", help: "k-means++ seed (default 0); each matrix draws from its own stream."),
        .init("max-iterations", value: "N", help: "Lloyd iterations at most (default 50)."),
    ]

    public static let entries: [MethodEntry] = [
        MethodEntry(
            name: "swsc", summary: "K-means shared channels plus a low-rank SVD error compensation (Zeng et al., 2025)", options: options
        ) { a, config in try SWSCMethod(options: try parse(a), config: config) }
    ]

    static func parse(_ a: MethodArguments) throws(MethodOptionError) -> Options {
        var o = Options()
        o.clusters = try a.int("clusters")
        // "full": min(d_in, d_out) of each matrix, known once the shapes are.
        o.rank = a.value("residual-rank") == "full" ? fullRank : try a.int("residual-rank")
        o.bits = try a.double("bits", expecting: "a number of bits per weight")
        if let f = try a.double("cluster-share", expecting: "a fraction in (0, 1]") { o.clusterShare = f }
        if let m = try MatrixSelection.parse(a) { o.matrices = m }
        if let c = a.value("channels") {
            guard let channels = ClusteredLinear.Channels(rawValue: c) else { throw MethodOptionError("--channels must be rows or cols, got '\(c)'") }
            o.channels = channels
        }
        if let d = a.value("data-aware") {
            guard let mode = DataAware(rawValue: d) else {
                throw MethodOptionError("--data-aware must be one of \(DataAware.allCases.map(\.rawValue).joined(separator: ", ")), got '\(d)'")
            }
            o.dataAware = mode
        }
        if let s = try a.int("seed") {
            guard s >= 0 else { throw MethodOptionError("--seed must be a non-negative integer, got \(s)") }
            o.seed = UInt64(s)
        }
        if let n = try a.int("max-iterations") { o.maxIterations = n }
        return o
    }

    /// `Options.rank` for `--residual-rank full`.
    public static let fullRank = Int.min

    public let options: Options
    /// Clusters and rank per matrix type, validated against the model.
    public let choices: [MatrixType: Choice]

    struct Done {
        var type: MatrixType
        var layer: Int
        var choice: Choice
        var iterations: Int
        var objective: Double
        var reseeded: Int
        var relativeError: Double
        var weightedError: Double
        var bits: Double
        var seconds: Double
        var kmeansSeconds: Double
    }
    private var done: [Done] = []
    private var modules: [String: CompressedManifest.Module] = [:]
    private var tensors: [(name: String, value: Matrix<Float>)] = []
    private var storedTypes: [String: SafetensorsDType] = [:]

    public init(options: Options, config c: ModelConfig) throws(SheafError) {
        self.options = options
        let op = "compress swsc"
        guard options.matrices.count > 0 else { throw .invalidArgument(op: op, detail: "--matrices names no matrix type") }
        if options.dataAware.clustering && options.channels == .cols {
            throw .invalidArgument(op: op, detail: "--data-aware \(options.dataAware.rawValue) weighs input dimensions, which --channels cols clusters; use rows, or --data-aware compensation")
        }
        guard options.maxIterations >= 1 else { throw .invalidArgument(op: op, detail: "--max-iterations must be at least 1, got \(options.maxIterations)") }
        var choices: [MatrixType: Choice] = [:]
        for t in options.matrices {
            let (dOut, dIn) = t.shape(c)
            let channelCount = options.channels == .rows ? dOut : dIn
            let choice: Choice
            if let bits = options.bits {
                guard options.clusters == nil, options.rank == nil else {
                    throw .invalidArgument(op: op, detail: "--bits chooses --clusters and --residual-rank: give either --bits or those two")
                }
                guard options.clusterShare > 0, options.clusterShare <= 1 else {
                    throw .invalidArgument(op: op, detail: "--cluster-share must be in (0, 1], got \(options.clusterShare)")
                }
                choice = try Self.choose(bits: bits, share: options.clusterShare, dOut: dOut, dIn: dIn, channels: options.channels, type: t)
            } else {
                guard let k = options.clusters else { throw .invalidArgument(op: op, detail: "swsc needs --clusters K (and --residual-rank R) or --bits B") }
                let r = options.rank == Self.fullRank ? min(dIn, dOut) : options.rank ?? 0
                guard k >= 1, k <= channelCount else {
                    throw .invalidArgument(op: op, detail: "--clusters \(k) is outside 1...\(channelCount), the \(options.channels.rawValue) of \(t.rawValue) (\(dOut), \(dIn))")
                }
                guard r >= 0, r <= min(dIn, dOut) else {
                    throw .invalidArgument(op: op, detail: "--residual-rank \(r) is outside 0...\(min(dIn, dOut)) for \(t.rawValue) (\(dOut), \(dIn))")
                }
                choice = Choice(clusters: k, rank: r)
            }
            choices[t] = choice
        }
        self.choices = choices
    }

    /// Average bits per weight of a (dOut, dIn) matrix stored as `choice`, 16-bit floats:
    /// (16·(k·length + r·(dIn + dOut)) + channels·⌈log₂ k⌉) / (dIn·dOut).
    public static func averageBits(_ choice: Choice, dOut: Int, dIn: Int, channels: ClusteredLinear.Channels) -> Double {
        let (channelCount, length) = channels == .rows ? (dOut, dIn) : (dIn, dOut)
        return Double(16 * (choice.clusters * length + choice.rank * (dIn + dOut)) + channelCount * labelBits(choice.clusters)) / Double(dIn * dOut)
    }

    /// ⌈log₂ k⌉: 0 for one cluster.
    public static func labelBits(_ k: Int) -> Int { k <= 1 ? 0 : Int.bitWidth - (k - 1).leadingZeroBitCount }

    /// The `--bits` rule: the largest k whose centroids and labels fit in `share` of the budget,
    /// then the largest rank the rest buys.
    static func choose(bits: Double, share: Double, dOut: Int, dIn: Int, channels: ClusteredLinear.Channels, type: MatrixType) throws(SheafError) -> Choice {
        let (channelCount, length) = channels == .rows ? (dOut, dIn) : (dIn, dOut)
        let budget = bits * Double(dIn * dOut)
        func clusterBits(_ k: Int) -> Double { Double(16 * k * length + channelCount * labelBits(k)) }
        guard bits > 0, clusterBits(1) <= share * budget else {
            let least = clusterBits(1) / share / Double(dIn * dOut)
            throw .invalidArgument(op: "compress swsc", detail: "--bits \(bits) cannot hold one \(length)-wide centroid of \(type.rawValue) (\(dOut), \(dIn)): it needs at least \(String(format: "%.3f", least)) bits at cluster share \(share)")
        }
        var k = 1
        while k < channelCount, clusterBits(k + 1) <= share * budget { k += 1 }
        let rank = min(min(dIn, dOut), max(0, Int((budget - clusterBits(k)) / Double(16 * (dIn + dOut)))))
        return Choice(clusters: k, rank: rank)
    }

    public var name: String { "swsc" }
    /// The Grams weigh the reported error (and, when data-aware, the method itself).
    public var statistics: CalibrationStatistics { .inputGrams }
    public var requestedRatio: Double? { nil }

    public var recordedOptions: JSONValue {
        .object([
            "matrices": .array(options.matrices.map { .string($0.rawValue) }), "channels": .string(options.channels.rawValue),
            "clusters": options.clusters.map(JSONValue.int) ?? .null, "residual_rank": options.rank.map { $0 == Self.fullRank ? .string("full") : .int($0) } ?? .null,
            "bits": options.bits.map(JSONValue.number) ?? .null, "cluster_share": .number(options.clusterShare),
            "data_aware": .string(options.dataAware.rawValue), "seed": .int(Int(clamping: options.seed)),
            "max_iterations": .int(options.maxIterations), "tolerance": .number(options.tolerance),
            "choices": .object(Dictionary(uniqueKeysWithValues: choices.map { ($0.key.rawValue, JSONValue.object(["clusters": .int($0.value.clusters), "rank": .int($0.value.rank)])) })),
        ])
    }

    public func layerReady(_ layer: Int, grams: [LinearInput: Matrix<Double>]?, context: CompressionContext) throws(SheafError) {
        for t in MatrixType.allCases where choices[t] != nil {
            let t0 = monotonicSeconds()
            let w = try context.weight(t, layer: layer)
            let gram = grams?[t.input]
            try compress(t, layer: layer, w: w, gram: gram, backend: context.backend, epsilon: options.epsilon, t0: t0)
        }
    }

    /// One matrix: cluster, compensate, round to what is stored, measure.
    func compress(_ t: MatrixType, layer: Int, w: Matrix<Float>, gram: Matrix<Double>?, backend: any Backend, epsilon: Double, t0: Double) throws(SheafError) {
        let choice = choices[t]!
        let (dOut, dIn) = (w.rows, w.cols)
        let points = options.channels == .rows ? w : w.transposed
        var clustered = points
        var scale: [Float]?
        if options.dataAware.clustering, let gram {
            // ‖D·(p − c)‖² with D = diag(√G_jj): K-means on the scaled points.
            let s = (0..<dIn).map { Float(max(0, gram[$0, $0]).squareRoot()) }
            for r in 0..<clustered.rows { for j in 0..<dIn { clustered[r, j] *= s[j] } }
            scale = s
        }
        let seed = Self.seed(options.seed, layer: layer, type: t)
        let k0 = monotonicSeconds()
        let km = try KMeans.cluster(
            clustered, options: .init(clusters: choice.clusters, maxIterations: options.maxIterations, tolerance: options.tolerance, seed: seed),
            backend: backend)
        let kmeansSeconds = monotonicSeconds() - k0
        // Centroids are the means of the unscaled points (a per-dimension scale leaves means as they are).
        var fallback = km.centroids
        if let scale { for c in 0..<fallback.rows { for j in 0..<dIn { fallback[c, j] = scale[j] > 0 ? fallback[c, j] / scale[j] : 0 } } }
        var centroids = KMeans.means(points, km.labels, fallback: fallback)
        for i in 0..<centroids.count { centroids.values[i] = Self.half(centroids.values[i]) }
        if centroids.values.contains(where: { !$0.isFinite }) {
            throw .nonFinite(op: "compress swsc \(t.module(layer: layer))", what: "a centroid exceeds the Float16 range")
        }

        // W' and the error E = W − W', from the centroids as stored.
        var shared = Matrix<Float>.zeros(rows: dOut, cols: dIn)
        for o in 0..<dOut {
            for i in 0..<dIn {
                shared[o, i] = options.channels == .rows ? centroids[Int(km.labels[o]), i] : centroids[Int(km.labels[i]), o]
            }
        }
        var approx = shared.asDouble
        var residual: (basisT: Matrix<Float>, coefficientsT: Matrix<Float>)?
        if choice.rank > 0 {
            var e = w
            for i in 0..<e.count { e.values[i] -= shared.values[i] }
            var factors: (basisT: Matrix<Float>, coefficientsT: Matrix<Float>)
            if options.dataAware.compensation, let gram {
                let g = try WhitenedSVD.factor(
                    type: t, layers: [layer], weights: [e], grams: [gram], rank: choice.rank, whiten: true, epsilon: epsilon, backend: backend)
                factors = (g.basisT, g.coefficientsT[0])
            } else {
                factors = try Self.truncatedSVD(e, rank: choice.rank)
            }
            for i in 0..<factors.basisT.count { factors.basisT.values[i] = Self.half(factors.basisT.values[i]) }
            for i in 0..<factors.coefficientsT.count { factors.coefficientsT.values[i] = Self.half(factors.coefficientsT.values[i]) }
            // Beyond ±65504 a Float16 is infinite: refuse now rather than write what load refuses.
            if factors.basisT.values.contains(where: { !$0.isFinite }) {
                throw .nonFinite(op: "compress swsc \(t.module(layer: layer))", what: "the residual basis exceeds the Float16 range (try --data-aware none or clustering)")
            }
            let low = try LAPACK.multiply(factors.coefficientsT.asDouble, factors.basisT.asDouble)
            for i in 0..<approx.count { approx.values[i] += low.values[i] }
            residual = factors
        }
        let (relative, weighted) = try MatrixSelection.errors(w, approx, gram: gram)

        let module = t.module(layer: layer)
        var names = ["centroids": module + ".centroids", "labels": module + ".labels"]
        tensors.append((names["centroids"]!, centroids))
        tensors.append((names["labels"]!, try Matrix(rows: 1, cols: km.labels.count, values: km.labels.map { Float($0) })))
        storedTypes[names["centroids"]!] = .F16
        storedTypes[names["labels"]!] = choice.clusters <= 256 ? .U8 : .U16
        if let residual {
            names["basis"] = module + ".residual_basis"
            names["coefficients"] = module + ".residual_coefficients"
            tensors.append((names["basis"]!, residual.basisT))
            tensors.append((names["coefficients"]!, residual.coefficientsT))
            storedTypes[names["basis"]!] = .F16
            storedTypes[names["coefficients"]!] = .F16
        }
        modules[module] = .init(kind: ClusteredKind.name(options.channels), tensors: names)
        done.append(Done(
            type: t, layer: layer, choice: choice, iterations: km.iterations, objective: km.objective, reseeded: km.reseeded,
            relativeError: relative, weightedError: weighted, bits: Self.averageBits(choice, dOut: dOut, dIn: dIn, channels: options.channels),
            seconds: monotonicSeconds() - t0, kmeansSeconds: kmeansSeconds))
    }

    /// The k-means++ seed of one matrix: its own stream of the base seed.
    public static func seed(_ base: UInt64, layer: Int, type: MatrixType) -> UInt64 {
        var rng = SplitMix64(seed: base &+ UInt64(layer * MatrixType.allCases.count + MatrixType.allCases.firstIndex(of: type)!))
        return rng.next()
    }

    /// x rounded to Float16 and back: what the checkpoint stores.
    static func half(_ x: Float) -> Float { HalfFloat.f16ToFloat(HalfFloat.floatToF16(x)) }

    /// E ≈ coefficientsT·basisT with basisT = Σ_r·V_rᵀ (rank, dIn) and coefficientsT = U_r (dOut, rank).
    static func truncatedSVD(_ e: Matrix<Float>, rank: Int) throws(SheafError) -> (basisT: Matrix<Float>, coefficientsT: Matrix<Float>) {
        let (u, s, vt) = try LAPACK.svd(e.asDouble)
        let r = min(rank, s.count)
        var basisT = Matrix<Float>.zeros(rows: rank, cols: e.cols), coefficientsT = Matrix<Float>.zeros(rows: e.rows, cols: rank)
        for j in 0..<r {
            for i in 0..<e.cols { basisT[j, i] = Float(s[j] * vt[j, i]) }
            for o in 0..<e.rows { coefficientsT[o, j] = Float(u[o, j]) }
        }
        return (basisT, coefficientsT)
    }

    public func finish(context: CompressionContext) throws(SheafError) -> MethodOutput {
        MethodOutput(modules: modules, tensors: tensors, storedTypes: storedTypes, report: report(config: context.config))
    }

    func report(config c: ModelConfig) -> MethodReport {
        // One row per matrix type: errors averaged over layers, iterations and time summed.
        var rows: [[String]] = []
        var byType: [JSONValue] = []
        var totalBits = 0.0, totalWeights = 0.0
        for t in MatrixType.allCases {
            let mine = done.filter { $0.type == t }
            guard let first = mine.first else { continue }
            let (dOut, dIn) = t.shape(c)
            let n = Double(mine.count)
            let rel = mine.map(\.relativeError).reduce(0, +) / n, wtd = mine.map(\.weightedError).reduce(0, +) / n
            let iterations = mine.map(\.iterations).reduce(0, +), seconds = mine.map(\.seconds).reduce(0, +)
            totalBits += first.bits * Double(dOut * dIn) * n
            totalWeights += Double(dOut * dIn) * n
            rows.append([
                t.rawValue, "\(mine.count)", "\(first.choice.clusters)", "\(first.choice.rank)", String(format: "%.3f", first.bits),
                String(format: "%.1f", Double(iterations) / n), scientific(rel), scientific(wtd), fixed(seconds),
            ])
            byType.append(.object([
                "type": .string(t.rawValue), "clusters": .int(first.choice.clusters), "rank": .int(first.choice.rank), "bits": .number(first.bits),
                "layers": .array(mine.map { d in
                    .object([
                        "layer": .int(d.layer), "iterations": .int(d.iterations), "objective": .number(d.objective), "reseeded": .int(d.reseeded),
                        "relative_error": .number(d.relativeError), "weighted_error": .number(d.weightedError), "seconds": .number(d.seconds),
                        "kmeans_seconds": .number(d.kmeansSeconds),
                    ])
                }),
            ]))
        }
        let average = totalWeights > 0 ? totalBits / totalWeights : 0
        let reseeded = done.map(\.reseeded).reduce(0, +)
        let kmeansSeconds = done.map(\.kmeansSeconds).reduce(0, +)
        return MethodReport(
            columns: ["type", "layers", "clusters", "rank", "bits", "iterations", "‖W−Ŵ‖/‖W‖", "weighted error", "seconds"], rows: rows,
            notes: [
                "average bits per compressed weight \(String(format: "%.3f", average)) (16-bit centroids and factors, ⌈log₂ k⌉-bit labels)",
                "channels \(options.channels.rawValue), data-aware \(options.dataAware.rawValue), empty clusters re-seeded \(reseeded), "
                    + "k-means \(fixed(kmeansSeconds)) s of the method's time",
            ],
            json: .object([
                "average_bits": .number(average), "reseeded": .int(reseeded), "kmeans_seconds": .number(kmeansSeconds), "types": .array(byType),
            ]))
    }
}

/// What SWSC and RTN share: the `--matrices` option and the error measures.
enum MatrixSelection {
    /// "all" or a list of matrix types.
    static func parse(_ a: MethodArguments) throws(MethodOptionError) -> [MatrixType]? {
        if a.value("matrices") == "all" { return MatrixType.allCases }
        return try a.matrixTypes("matrices")
    }

    /// (‖W − Ŵ‖/‖W‖, ‖X(W − Ŵ)ᵀ‖²/‖XWᵀ‖²) with the calibration Gram (0 without one).
    static func errors(_ w: Matrix<Float>, _ approx: Matrix<Double>, gram: Matrix<Double>?) throws(SheafError) -> (Double, Double) {
        var d = approx
        var num = 0.0, den = 0.0
        for i in 0..<d.count {
            d.values[i] = Double(w.values[i]) - approx.values[i]
            num += d.values[i] * d.values[i]
            den += Double(w.values[i]) * Double(w.values[i])
        }
        let relative = den > 0 ? (num / den).squareRoot() : 0
        guard let gram else { return (relative, 0) }
        let e = try WhitenedSVD.quadraticTrace(d, gram), total = try WhitenedSVD.quadraticTrace(w.asDouble, gram)
        return (relative, total > 0 ? max(0, e) / total : 0)
    }
}
