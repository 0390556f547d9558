import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// How much the model's output moves per unit of each matrix's relative calibration error
/// (`--allocate sensitivity`). A probe truncates one matrix of the dense model (its whitened
/// factors, at the rank that leaves `probeError` of its ‖XWᵀ‖²), measures the mean per-token
/// KL(p_dense ‖ p_probe) of the next-token distributions on a few calibration windows, and puts
/// the matrix back: weight = KL / error. The KL is the loss growth to expect (the dense model's
/// own predictions as the labels): ≥ 0 at every token and free of the label noise that made the
/// first version (the difference of two mean NLLs) mostly noise at small errors. It grows with
/// the square of a small output perturbation, i.e. linearly in the squared-norm error the
/// spectrum predicts, so the weight turns the spectrum's error into the divergence the model
/// actually pays (ASVD measures a perplexity per candidate ratio instead; one probe per matrix
/// and a linear model is what makes the probes cheap enough to cache).
public struct Sensitivity: Sendable {
    /// Module → KL (nats per token) per unit of relative calibration error, > 0.
    public var weights: [String: Double]
    /// Module → (probe rank, its relative error, mean KL(p_dense ‖ p_probe) measured, nats).
    public var probes: [String: (rank: Int, error: Double, kl: Double)]
    /// The dense model's mean next-token loss on the probe windows, nats.
    public var baseLoss: Double
    public var windows: Int
    public var seconds: Double
    public var fromCache: Bool

    static let version = "sheaf-sensitivity-v2"

    /// Probes every layer of every group (one group per (type, layer): the finest tiling), or
    /// reads them from beside the cached Grams. `key` names what else the factors depend on.
    static func measure(
        groups: [FactoredGroup], probeError: Double, windows requested: Int, context: CompressionContext, key: String
    ) throws(SheafError) -> Sensitivity {
        let probeWindows = Array(context.windows.prefix(requested))
        guard !probeWindows.isEmpty else { throw .invalidArgument(op: "sensitivity", detail: "no calibration windows to probe on") }
        var h = SheafCore.SHA256()
        Array("\(version)|\(key)|\(probeError)|\(probeWindows.count)|\(groups.map { "\($0.type.rawValue)\($0.layers)" })".utf8).withUnsafeBytes { h.update($0) }
        let file = "sensitivity-\(SheafCore.SHA256.hex(h.finalize()).prefix(16)).json"
        if let cache = context.cache, let gramKey = context.gramKey, let data = cache.extra(gramKey, name: file),
            let cached = try? decode(data), cached.weights.count == groups.reduce(0, { $0 + $1.layers.count })
        {
            context.progress("sensitivity probes from the cache (\(file))")
            return cached
        }
        let t0 = monotonicSeconds(), c = context.config, backend = context.backend
        let model = try LlamaModel(files: context.files, backend: backend)
        // Each window's residual stream entering the layer probed: a probe of layer l runs only
        // layers l... and the output head twice (its own logits and the dense ones, recomputed
        // from the dense final hidden states, (tokens, hidden) per window, against holding
        // (tokens, vocabulary)).
        let residuals = try probeWindows.map { (w) throws(SheafError) in try model.residual(w, entering: 0) }
        let denseHidden = try probeWindows.map { (w) throws(SheafError) in try model.hiddenStates(w) }
        var baseSum = 0.0, baseCount = 0
        for w in probeWindows {
            let nll = try model.nextTokenNLL(w)
            baseSum += nll.reduce(0.0) { $0 + Double($1) }
            baseCount += nll.count
        }
        let base = baseSum / Double(baseCount)
        func divergence(from layer: Int) throws(SheafError) -> Double {
            var sum = 0.0, count = 0
            for ((w, r), dense) in zip(zip(probeWindows, residuals), denseHidden) {
                let kl = try model.nextTokenKL(w, reference: dense, resuming: r, at: layer)
                sum += kl.reduce(0.0) { $0 + Double($1) }
                count += kl.count
            }
            return sum / Double(count)
        }
        var probes: [String: (rank: Int, error: Double, kl: Double)] = [:]
        let total = groups.reduce(0) { $0 + $1.layers.count }
        var byLayer: [Int: [(FactoredGroup, Int)]] = [:]
        for g in groups { for (p, l) in g.layers.enumerated() { byLayer[l, default: []].append((g, p)) } }
        for layer in 0..<c.layerCount {
            if layer > 0 { for r in residuals { try model.advance(r, through: layer - 1) } }
            for (g, p) in byLayer[layer] ?? [] {
                let (dOut, dIn) = g.type.shape(c)
                let module = g.type.module(layer: layer)
                // The smallest held rank that leaves at most probeError (else all the factors held).
                let k = (1...g.rank).first { g.layerError(p, rank: $0) <= probeError } ?? g.rank
                let error = g.layerError(p, rank: k)
                let cut = g.truncated(to: k)
                let w = try cut.reconstruction(p).asFloat
                let bias = g.type.hasBias(c) ? try context.loader.hostValues(module + ".bias", shape: [dOut]) : nil
                let original = model.layers[layer][g.type]
                model.layers[layer][g.type] = try DenseLinear(weight: w.values, outputSize: dOut, inputSize: dIn, bias: bias, on: backend, name: module + " (probe)")
                let kl = try divergence(from: layer)
                model.layers[layer][g.type] = original
                probes[module] = (k, error, kl)
                let elapsed = monotonicSeconds() - t0
                context.progress("sensitivity: probe \(probes.count)/\(total) (\(module), rank \(k)), \(fixed(elapsed)) s, "
                    + "ETA \(fixed(elapsed / Double(probes.count) * Double(total - probes.count))) s")
            }
        }
        // A probe that left no error or moved nothing (a matrix at full rank) still weighs a
        // little: a thousandth of the median weight, so the allocator never treats it as free.
        let positive = probes.values.filter { $0.kl > 0 && $0.error > 0 }.map { $0.kl / $0.error }.sorted()
        let floor = positive.isEmpty ? 1.0 : positive[positive.count / 2] * 1e-3
        let weights = probes.mapValues { $0.kl > 0 && $0.error > 0 ? max($0.kl / $0.error, floor) : floor }
        let result = Sensitivity(
            weights: weights, probes: probes, baseLoss: base, windows: probeWindows.count, seconds: monotonicSeconds() - t0, fromCache: false)
        if let cache = context.cache, let gramKey = context.gramKey {
            do throws(SheafError) {
                guard let data = try? JSONEncoder().encode(result.json) else { throw .invalidArgument(op: "sensitivity", detail: "cannot encode the probes") }
                try cache.writeExtra(gramKey, name: file, data)
            } catch {
                context.progress("warning: not caching the sensitivity probes: \(error.description)")
            }
        }
        return result
    }

    /// As recorded in the report (and the cache).
    public var json: JSONValue {
        .object([
            "base_loss": .number(baseLoss), "windows": .int(windows), "seconds": .number(seconds),
            "matrices": .object(Dictionary(uniqueKeysWithValues: probes.map { module, p in
                (module, JSONValue.object([
                    "probe_rank": .int(p.rank), "probe_error": .number(p.error), "kl": .number(p.kl), "weight": .number(weights[module]!),
                ]))
            })),
        ])
    }

    static func decode(_ data: Data) throws -> Sensitivity {
        guard case .object(let o) = try JSONDecoder().decode(JSONValue.self, from: data), let base = o["base_loss"]?.doubleValue,
            case .object(let matrices)? = o["matrices"]
        else { throw SheafError.invalidArgument(op: "sensitivity cache", detail: "not a sensitivity record") }
        var s = Sensitivity(weights: [:], probes: [:], baseLoss: base, windows: o["windows"]?.intValue ?? 0, seconds: 0, fromCache: true)
        for (module, value) in matrices {
            guard case .object(let m) = value, let k = m["probe_rank"]?.intValue, let e = m["probe_error"]?.doubleValue,
                let d = m["kl"]?.doubleValue, d >= 0, let w = m["weight"]?.doubleValue, w > 0, w.isFinite
            else { throw SheafError.invalidArgument(op: "sensitivity cache", detail: "bad entry for \(module)") }
            s.probes[module] = (k, e, d)
            s.weights[module] = w
        }
        return s
    }

    /// log10 of each matrix's weight per layer (rows) and matrix type (columns).
    func map(_ c: ModelConfig, method: String) -> String {
        let types = MatrixType.allCases.filter { t in (0..<c.layerCount).contains { weights[t.module(layer: $0)] != nil } }
        let values = (0..<c.layerCount).map { l in types.map { t in weights[t.module(layer: l)].map(log10) } }
        var map = SVG.HeatMap(
            title: "\(method): measured sensitivity per matrix", values: values, rowTitle: "layer", columnTitle: "matrix type",
            rowLabels: (0..<c.layerCount).map(String.init), columnLabels: types.map { String($0.rawValue.prefix { $0 != "_" }) },
            colorTitle: "log10 KL per unit relative error (nats/token)")
        map.subtitle = "one probe per matrix on \(windows) calibration windows, dense loss \(String(format: "%.4f", baseLoss)) nats"
        return map.render()
    }
}
