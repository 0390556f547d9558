import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// The compression methods, in one table: the CLI lists them from here.
public enum CompressionMethod: String, CaseIterable, Sendable {
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

public struct CompressionOptions: Sendable {
    public enum Refit: String, Sendable, CaseIterable { case auto, on, off }

    public var method: CompressionMethod = .basisSharing
    /// Fraction of the decoder linear parameters to remove, in (0, 1).
    public var ratio: Double = 0.2
    /// Layers per shared basis; nil takes the method's default (2 for Basis Sharing, else 1).
    public var groupSize: Int?
    /// Matrix types whose basis is shared across the group; the others get one per layer.
    public var shared: [MatrixType] = [.q, .k, .v, .gate, .up]
    /// Per-type ranks that replace the ratio's.
    public var rankOverrides: [MatrixType: Int] = [:]
    /// Coefficient refit on the compressed model's Grams; auto = on for ratio ≥ 0.4.
    public var refit: Refit = .auto
    /// ε of the whitening fallback (−λmin + ε)·I.
    public var epsilon = 1e-6
    /// Recorded in the manifest; the methods here are deterministic and draw no random numbers.
    public var seed: UInt64 = 0

    public init() {}

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
            throw .invalidArgument(op: "compress", detail: "--ratio must be in (0, 1), got \(o.ratio)")
        }
        let n = o.effectiveGroupSize
        guard n >= 1, n <= c.layerCount else {
            throw .invalidArgument(op: "compress", detail: "--group-size must be between 1 and the model's \(c.layerCount) layers, got \(n)")
        }
        if o.method == .svdLLM && n != 1 {
            throw .invalidArgument(op: "compress", detail: "svd-llm factors each matrix alone (group size 1); use basis-sharing for --group-size \(n)")
        }
        var groups: [Group] = []
        for t in MatrixType.allCases {
            let size = o.shared.contains(t) ? n : 1
            let (dOut, dIn) = t.shape(c)
            for start in stride(from: 0, to: c.layerCount, by: size) {
                let layers = Array(start..<min(start + size, c.layerCount))
                var rank = MatrixType.rank(dIn: dIn, dOut: dOut, layers: layers.count, ratio: o.ratio)
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
        groups.first { $0.type == t && $0.layers.contains(i) }!.layers.last!
    }
}

/// The factors of a whole model, with what it took to make them.
public struct CompressionResult: Sendable {
    public var options: CompressionOptions
    /// Every group, in plan order (type, then first layer).
    public var groups: [FactoredGroup]
    public var gramsFromCache: Bool
    /// The source's checksum when the cache computed it (nil without a cache).
    public var sourceChecksum: String?
    public var refitRidges: Int
    /// Seconds per phase: "calibration", "factorization", "refit".
    public var seconds: [String: Double]
    public var whiteningFallbacks: Int { groups.filter(\.whiteningFallback).count }

    /// Stored linear parameters: each basis once, every layer's coefficients.
    public var storedLinearParameters: Int {
        groups.reduce(0) { $0 + $1.basisT.count + $1.coefficientsT.reduce(0) { $0 + $1.count } }
    }
}

public enum Compressor {
    /// Calibrates (or reads the cached Grams), factors every group as soon as its layers' Grams
    /// are complete and drops them, and optionally refits the coefficients on the Grams of the
    /// compressed model. Host memory holds at most one group's worth of Grams at a time.
    public static func compress(
        files: ModelFiles, backend: any Backend, windows: [[Int32]], options: CompressionOptions, cache: GramCache? = nil,
        progress: (String) -> Void = { _ in }
    ) throws(SheafError) -> CompressionResult {
        let c = files.config
        guard files.manifest == nil else {
            throw .invalidArgument(op: "compress", detail: "\(files.path) is already a compressed checkpoint: compress its source model instead")
        }
        let plan = try CompressionPlan(config: c, options: options)
        let loader = WeightLoader(files: files, backend: backend)
        var factored: [Int: FactoredGroup] = [:]  // plan index → factors
        var pending: [Int: [LayerGrams.Input: Matrix<Double>]] = [:]
        var factorSeconds = 0.0
        let t0 = monotonicSeconds()

        func weight(_ t: MatrixType, _ layer: Int) throws(SheafError) -> Matrix<Float> {
            let (dOut, dIn) = t.shape(c)
            return try Matrix(rows: dOut, cols: dIn, values: try loader.hostValues(t.module(layer: layer) + ".weight", shape: [dOut, dIn]))
        }

        // Layer i's Grams are in: factor every group that ends at i, then drop the Grams no
        // group still needs.
        func onLayer(_ i: Int, _ grams: [LayerGrams.Input: Matrix<Double>]) throws(SheafError) {
            let start = monotonicSeconds()
            pending[i] = grams
            for (index, g) in plan.groups.enumerated() where g.layers.last == i {
                let result = try WhitenedSVD.factor(
                    type: g.type, layers: g.layers, weights: try g.layers.map { (l) throws(SheafError) in try weight(g.type, l) },
                    grams: g.layers.map { pending[$0]![g.type.input]! }, rank: g.rank, whiten: options.method.whitened,
                    epsilon: options.epsilon, backend: backend)
                factored[index] = result
            }
            for j in pending.keys where MatrixType.allCases.allSatisfy({ plan.groupEnd($0, layer: j) <= i }) { pending[j] = nil }
            factorSeconds += monotonicSeconds() - start
            let elapsed = monotonicSeconds() - t0
            progress("layer \(i + 1)/\(c.layerCount) calibrated and factored, \(fixed(elapsed)) s, ETA \(fixed(elapsed / Double(i + 1) * Double(c.layerCount - i - 1))) s")
        }

        var fromCache = false
        let checksum = try cache.map { (_) throws(SheafError) in try files.checksum() }
        let key = checksum.map { GramCache.key(modelChecksum: $0, backend: backend, windows: windows) }
        if let cache, let key, cache.contains(key, layers: c.layerCount) {
            progress("calibration Grams from the cache (\(cache.root)/\(key.prefix(12))…)")
            // One layer at a time, as calibration would deliver them (all 30 layers of SmolLM2 are
            // 800 MB). A damaged entry is not fatal: drop what was factored and recalibrate.
            var damaged: SheafError?
            for i in 0..<c.layerCount {
                let grams: [LayerGrams.Input: Matrix<Double>]
                do throws(SheafError) { grams = try cache.read(key, layer: i) } catch {
                    damaged = error
                    break
                }
                try onLayer(i, grams)
            }
            if let damaged {
                progress("warning: the cached Grams cannot be read (\(damaged.description)); calibrating instead")
                (factored, pending) = ([:], [:])
            } else {
                fromCache = true
            }
        }
        if !fromCache {
            // The cache is an optimisation: if it cannot be written, calibrate without it.
            var writer: GramCache.Writer?
            if let cache, let key {
                do throws(SheafError) { writer = try cache.writer(key) } catch {
                    progress("warning: not caching the Grams: \(error.description)")
                }
            }
            do throws(SheafError) {
                _ = try Calibration.collectGrams(files: files, backend: backend, windows: windows, keep: false, onLayer: { (i, grams) throws(SheafError) in
                    let host = try grams.download()
                    try writer?.write(layer: i, host)
                    try onLayer(i, host)
                })
                try writer?.finish()
            } catch {
                writer?.abandon()
                throw error
            }
        }
        let calibrationSeconds = monotonicSeconds() - t0 - factorSeconds
        var groups = plan.groups.indices.map { factored[$0]! }

        var ridges = 0, refitSeconds = 0.0
        if options.refitEnabled {
            let r0 = monotonicSeconds()
            ridges = try refit(&groups, files: files, loader: loader, backend: backend, windows: windows, weight: weight, progress: progress)
            refitSeconds = monotonicSeconds() - r0
        }
        return CompressionResult(
            options: options, groups: groups, gramsFromCache: fromCache, sourceChecksum: checksum, refitRidges: ridges,
            seconds: ["calibration": calibrationSeconds, "factorization": factorSeconds, "refit": refitSeconds])
    }

    /// Basis Sharing's coefficient refit: runs the calibration windows through the compressed
    /// model (one layer at a time, as calibration does) and, per layer, solves each matrix's
    /// coefficients by least squares on the Gram of the inputs that model feeds it, with the
    /// basis fixed. One pass, as the reference implementation does: the inputs are those of the
    /// compressed model *before* refit (layer i + 1 sees layer i unrefitted, and o and down see
    /// their own block's unrefitted q, k, v, gate, up), so the saved model's inputs differ
    /// slightly from those the refit fitted. Returns how many solves needed a ridge.
    static func refit(
        _ groups: inout [FactoredGroup], files: ModelFiles, loader: WeightLoader, backend: any Backend, windows: [[Int32]],
        weight: (MatrixType, Int) throws(SheafError) -> Matrix<Float>, progress: (String) -> Void
    ) throws(SheafError) -> Int {
        let c = files.config
        var bases: [Int: MatrixView] = [:]
        let scratch = Scratch(on: backend)
        for (index, g) in groups.enumerated() { bases[index] = try backend.upload(g.basisT.transposed, label: "\(g.type.rawValue) basis") }
        var byModule: [String: (group: Int, position: Int)] = [:]
        for (index, g) in groups.enumerated() { for (p, l) in g.layers.enumerated() { byModule[g.type.module(layer: l)] = (index, p) } }
        var ridges = 0
        var errorTerms = [(Double, Double)](repeating: (0, 0), count: groups.count)
        let t0 = monotonicSeconds()
        let snapshot = groups  // the layers run with the unrefitted coefficients
        _ = try Calibration.collectGrams(
            files: files, backend: backend, windows: windows, keep: false,
            layer: { (i) throws(SheafError) in
                try loader.layer(i, replacing: { (module) throws(SheafError) -> (any LinearLayer)? in
                    guard let (index, p) = byModule[module] else { return nil }
                    let g = snapshot[index]
                    let bias = g.type.hasBias(c) ? try loader.hostValues(module + ".bias", shape: [g.type.shape(c).dOut]) : nil
                    return try LowRankLinear(
                        basis: bases[index]!, coefficientsT: g.coefficientsT[p].values, outputSize: g.type.shape(c).dOut, bias: bias,
                        scratch: scratch, on: backend, name: module)
                })
            },
            onLayer: { (i, grams) throws(SheafError) in
                let host = try grams.download()
                for t in MatrixType.allCases {
                    guard let (index, p) = byModule[t.module(layer: i)] else { continue }
                    let w = try weight(t, i)
                    let solved = try WhitenedSVD.refitCoefficients(basisT: groups[index].basisT, weight: w, gram: host[t.input]!)
                    groups[index].coefficientsT[p] = solved.coefficientsT
                    if solved.ridge { ridges += 1 }
                    let (num, den) = try WhitenedSVD.errorTerms(groups[index], position: p, weight: w, gram: host[t.input]!)
                    errorTerms[index].0 += num
                    errorTerms[index].1 += den
                    if p == groups[index].layers.count - 1 { groups[index].refitError = errorTerms[index].1 > 0 ? errorTerms[index].0 / errorTerms[index].1 : 0 }
                }
                let elapsed = monotonicSeconds() - t0
                progress("refit: layer \(i + 1)/\(c.layerCount), \(fixed(elapsed)) s, ETA \(fixed(elapsed / Double(i + 1) * Double(c.layerCount - i - 1))) s")
            })
        return ridges
    }
}

/// "12.3": seconds and sizes in progress lines.
func fixed(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
