import Foundation
import SheafBackend
import SheafCompress
import SheafCore
import SheafIO
import SheafModel
import SheafTestSupport
import Testing

/// `--allocate spectrum`: the greedy over whitened spectra against brute force, and on a model.
@Suite struct RankAllocatorTests {
    typealias Item = RankAllocator.Item

    /// Every allocation of ranks 1...max (or the fixed one): the least discarded energy among
    /// those that cost at most `budget`.
    static func bruteForce(_ items: [Item], budget: Int, _ n: RankAllocator.Normalisation) -> Double {
        var best = Double.infinity
        func walk(_ i: Int, _ ranks: [Int], _ cost: Int) {
            guard cost <= budget else { return }
            if i == items.count {
                best = min(best, RankAllocator.discarded(items, ranks: ranks, normalisation: n))
                return
            }
            for k in (items[i].fixed.map { $0...$0 } ?? 1...items[i].energies.count) { walk(i + 1, ranks + [k], cost + k * items[i].cost) }
        }
        walk(0, [], 0)
        return best
    }

    /// Random descending spectra and unequal costs: every greedy result spends at most the
    /// budget, ends within one rank step of it, and removes the most energy of all allocations
    /// that spend no more than it does (the Lagrangian property of greedy prefixes).
    @Test func greedyIsOptimalForWhatItSpends() throws {
        var rng = SplitMix64(seed: 5)
        for trial in 0..<40 {
            let items = (0..<3).map { i -> Item in
                let count = 2 + Int(rng.next() % 4)
                let e = (0..<count).map { _ in Double(rng.next() % 1000) / 10 + 0.01 }.sorted(by: >)
                return Item(energies: e, cost: [3, 5, 7][i], fixed: trial % 5 == 0 && i == 1 ? 2 : nil)
            }
            let least = items.reduce(0) { $0 + ($1.fixed ?? 1) * $1.cost }
            let most = items.reduce(0) { $0 + ($1.fixed ?? $1.energies.count) * $1.cost }
            for n in RankAllocator.Normalisation.allCases {
                for budget in least...most {
                    let ranks = try #require(RankAllocator.spectrum(items, budget: budget, normalisation: n))
                    let spent = zip(items, ranks).reduce(0) { $0 + $1.0.cost * $1.1 }
                    #expect(spent <= budget)
                    for (item, k) in zip(items, ranks) {
                        #expect(k >= 1 && k <= item.energies.count && (item.fixed == nil || k == item.fixed))
                    }
                    // Within one step: some item still growable could not have fit.
                    let growable = zip(items, ranks).filter { $0.0.fixed == nil && $0.1 < $0.0.energies.count }.map(\.0.cost)
                    #expect(growable.isEmpty || budget - spent < growable.max()!, "trial \(trial) budget \(budget): \(budget - spent) left")
                    let got = RankAllocator.discarded(items, ranks: ranks, normalisation: n)
                    let optimum = Self.bruteForce(items, budget: spent, n)
                    #expect(abs(got - optimum) <= 1e-12 * max(1, optimum), "trial \(trial) budget \(budget) \(n): \(got) vs optimum \(optimum)")
                }
            }
        }
        #expect(RankAllocator.spectrum([Item(energies: [1, 1], cost: 4)], budget: 3, normalisation: .matrix) == nil)
    }

    /// Known spectra, equal costs: the ranks are the optimal ones, and the normalisation decides
    /// which matrix gets the last rank.
    @Test func knownSpectraGiveTheOptimalRanks() throws {
        let a = Item(energies: [100, 50, 1], cost: 1), b = Item(energies: [1, 0.9, 0.001], cost: 1)
        // Absolute: A's 50 beats B's 0.9. Relative: B's 0.9/1.901 beats A's 50/151.
        #expect(RankAllocator.spectrum([a, b], budget: 3, normalisation: .none) == [2, 1])
        #expect(RankAllocator.spectrum([a, b], budget: 3, normalisation: .matrix) == [1, 2])
        #expect(RankAllocator.spectrum([a, b], budget: 6, normalisation: .matrix) == [3, 3])
        #expect(RankAllocator.spectrum([a, b], budget: 100, normalisation: .none) == [3, 3])
        let c = Item(energies: [8, 4, 2, 1], cost: 1), d = Item(energies: [8, 4, 2, 1], cost: 1)
        #expect(RankAllocator.spectrum([c, d], budget: 5, normalisation: .none).map { $0.reduce(0, +) } == 5)
        #expect(RankAllocator.discarded([c, d], ranks: RankAllocator.spectrum([c, d], budget: 5, normalisation: .none)!, normalisation: .none) == 4)
    }
}

extension RankAllocatorTests {
    /// A group may be left dense: it never keeps a rank whose factors cost as much as its
    /// weights, the budget holds, and a flat spectrum (nothing to gain from low rank) goes dense
    /// before a steep one loses its leading ranks.
    @Test func denseWhenFactorsCostMore() throws {
        var rng = SplitMix64(seed: 9)
        for _ in 0..<200 {
            let items = (0..<3).map { _ -> Item in
                let count = 3 + Int(rng.next() % 6)
                let e = (0..<count).map { _ in Double(rng.next() % 1000) + 1 }.sorted(by: >)
                let cost = 2 + Int(rng.next() % 4)
                return Item(energies: e, cost: cost, denseCost: cost * (1 + Int(rng.next() % UInt64(count + 2))))
            }
            for budget in stride(from: items.reduce(0) { $0 + $1.cost }, through: items.reduce(0) { $0 + $1.denseCost! }, by: 3) {
                let c = try #require(RankAllocator.choices(items, budget: budget, normalisation: .matrix))
                #expect(RankAllocator.cost(items, c) <= budget)
                for (item, choice) in zip(items, c) { if let k = choice.rank { #expect(k >= 1 && k * item.cost < item.denseCost!) } }
            }
        }
        let flat = Item(energies: [1, 1, 1, 1], cost: 4, denseCost: 10), steep = Item(energies: [100, 1, 0.5, 0.1], cost: 4, denseCost: 14)
        #expect(RankAllocator.choices([flat, steep], budget: 14, normalisation: .matrix) == [.dense, .rank(1)])
        #expect(RankAllocator.choices([flat, steep], budget: 24, normalisation: .matrix) == [.dense, .dense])
    }
}

extension RankAllocatorTests {
    /// Ironing pools every rise into its mean: the result never rises, keeps the sum, and leaves
    /// a non-increasing sequence alone.
    @Test func ironingPoolsRises() {
        #expect(RankAllocator.ironed([3, 1, 2]) == [3, 1.5, 1.5])
        #expect(RankAllocator.ironed([1, 2, 3]) == [2, 2, 2])
        #expect(RankAllocator.ironed([5, 4, 4, 1]) == [5, 4, 4, 1])
        var rng = SplitMix64(seed: 12)
        for _ in 0..<100 {
            let g = (0..<(1 + Int(rng.next() % 12))).map { _ in Double(rng.next() % 100) }
            let x = RankAllocator.ironed(g)
            #expect(x.count == g.count && zip(x, x.dropFirst()).allSatisfy { $0 >= $1 - 1e-12 })
            #expect(abs(x.reduce(0, +) - g.reduce(0, +)) <= 1e-9)
        }
    }

    /// Two layers with the same weights share at no loss (one basis serves both for less than
    /// two), two layers with orthogonal weights gain nothing from sharing (the shared spectrum is
    /// the union of theirs, at a higher cost per rank): the cover shares the first and splits
    /// the second; neither ever overspends.
    @Test func coverSharesOnlyWhatIsShared() throws {
        let single = [8.0, 4, 2, 1]
        // d_in 10, d_out 10: a single rank costs 20, a shared one 30.
        let same = [Item(energies: single.map { 2 * $0 }, cost: 30, denseCost: 200), Item(energies: single, cost: 20, denseCost: 100), Item(energies: single, cost: 20, denseCost: 100)]
        let union = single.flatMap { [$0, $0] }
        let orthogonal = [Item(energies: union, cost: 30, denseCost: 200), same[1], same[2]]
        let cover = RankAllocator.Cover(item: 0, parts: [.init(item: 1), .init(item: 2)])
        for budget in [60, 90, 120] {
            let shared = try #require(RankAllocator.covered(same, covers: [cover], budget: budget))
            #expect(shared[0] != nil && shared[1] == nil && shared[2] == nil, "budget \(budget): \(shared)")
            let split = try #require(RankAllocator.covered(orthogonal, covers: [cover], budget: budget))
            #expect(split[0] == nil && split[1] != nil && split[2] != nil, "budget \(budget): \(split)")
            for (items, picks) in [(same, shared), (orthogonal, split)] {
                let chosen = picks.indices.filter { picks[$0] != nil }
                #expect(RankAllocator.cost(chosen.map { items[$0] }, chosen.map { picks[$0]! }) <= budget)
            }
        }
        #expect(RankAllocator.covered(same, covers: [cover], budget: 29) == nil)
    }
}

extension BackendSuites {
    @Suite struct SpectrumAllocation {
        typealias F = CompressFixture

        static func compress(_ source: ModelFiles, _ values: [String: String]) throws -> (CompressionResult, WhitenedSVDMethod) {
            let a = MethodArguments(values: values.mapValues { [$0] })
            let m = try MethodRegistry.standard.entry("basis-sharing")!.make(a, source.config) as! WhitenedSVDMethod
            return (try Compressor.compress(files: source, backend: Backends.cpu, windows: F.windows, method: m), m)
        }

        /// On a model: the budget is met within one rank step (the plan rule: (1 − R)·Σ n·d_in·d_out
        /// kept parameters), every rank is in 1...full, the error left is at most the uniform
        /// rule's, the reported errors are the spectrum's tails, and the rank map is written.
        @Test func meetsTheBudgetAndBeatsUniform() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 51, layers: 4))
            let c = source.config
            for budget in ["0.3", "0.6"] {
                let (r, m) = try Self.compress(source, ["budget": budget, "allocate": "spectrum", "group-size": "2"])
                let a = try #require(m.allocation)
                let steps = m.groups.map { $0.type.shape(c).dIn + $0.layers.count * $0.type.shape(c).dOut }
                #expect(a.spent <= a.budget && a.budget - a.spent < steps.max()!, "\(a.spent) of \(a.budget)")
                let files = try F.write(r, source: source, tag: "spectrum-\(budget)")
                #expect(files.manifest!.storedLinearParameters == a.spent)
                #expect(abs(files.manifest!.achievedRatio - Double(budget)!) <= Double(steps.max()!) / Double(c.linearParameterCount))
                for g in m.groups {
                    let full = min(g.type.shape(c).dIn, g.layers.count * g.type.shape(c).dOut)
                    #expect(g.rank >= 1 && g.rank <= full)
                    // Never factors that cost as much as the weights they replace.
                    #expect(g.rank * (g.type.shape(c).dIn + g.layers.count * g.type.shape(c).dOut) < g.layers.count * g.type.shape(c).dOut * g.type.shape(c).dIn)
                    let tail = g.singularValues.dropFirst(g.rank).reduce(0) { $0 + $1 * $1 }, total = g.singularValues.reduce(0) { $0 + $1 * $1 }
                    #expect(abs(g.error - tail / total) <= 1e-12)
                }
                #expect(a.discarded <= a.uniformDiscarded)
                // Groups left dense are absent from the checkpoint's modules, the rest are low-rank.
                let modules = files.manifest!.modules
                for d in a.denseGroups { for l in d.layers { #expect(modules[d.type.module(layer: l)] == nil) } }
                #expect(modules.count + a.denseGroups.reduce(0) { $0 + $1.layers.count } == 7 * c.layerCount)
                #expect(FileManager.default.fileExists(atPath: files.path + "/" + WhitenedSVDMethod.rankPictureName))
                // The truncated factors are what the checkpoint runs.
                let model = try LlamaModel(files: files, backend: Backends.cpu)
                #expect(try model.logits(F.evalTokens).values.allSatisfy(\.isFinite))
            }
        }

        @Test func refusals() throws {
            let c = try ModelFiles.open(try TinyModel.write(seed: 52)).config
            let entry = MethodRegistry.standard.entry("basis-sharing")!
            func message(_ values: [String: String]) -> String {
                do { _ = try entry.make(MethodArguments(values: values.mapValues { [$0] }), c); return "accepted" } catch { return "\(error)" }
            }
            #expect(message(["allocate": "greedy"]).contains("--allocate must be one of uniform, spectrum, sensitivity, got 'greedy'"))
            #expect(message(["budget": "1.5", "allocate": "spectrum"]).contains("--budget must be in (0, 1), got 1.5"))
            #expect(message(["budget": "0.2", "ratio": "0.2"]).contains("--budget and --ratio are the same fraction"))
            #expect(message(["normalise": "relative"]).contains("--normalise must be one of layer, matrix, none"))
            #expect(message(["group-size": "1,x"]).contains("--group-size expects an integer or a list of them"))
            #expect(message(["group-size": "1,2"]).contains("add --allocate spectrum or sensitivity"))
            #expect(message(["group-size": "1,2", "allocate": "spectrum", "normalise": "matrix"]).contains("cannot compare group sizes: use layer"))
            let four = try ModelFiles.open(try TinyModel.write(seed: 52, layers: 4)).config
            #expect(throws: (any Error).self) { try entry.make(MethodArguments(values: ["group-size": ["1,2,3"], "allocate": ["spectrum"]]), four) }
            do { _ = try entry.make(MethodArguments(values: ["group-size": ["1,2,3"], "allocate": ["spectrum"]]), four) } catch {
                #expect("\(error)".contains("each size must divide the next (2 does not divide 3)"))
            }
            #expect(message(["group-size": "1,4", "allocate": "spectrum"]).contains("--group-size must be between 1 and the model's 2 layers, got 4"))
            #expect(message(["allocate": "sensitivity", "normalise": "none"]).contains("it needs --normalise layer"))
            #expect(message(["allocate": "sensitivity", "probe-windows": "0"]).contains("--probe-windows must be at least 1, got 0"))
            #expect(message(["allocate": "sensitivity", "probe-error": "1.5"]).contains("--probe-error must be in (0, 1), got 1.5"))
            #expect(message(["group-size": "1,2", "allocate": "sensitivity"]) == "accepted")
        }

        /// Σ over every (type, layer) of the layer's relative calibration error: the measure
        /// `--normalise layer` minimises, computed from each chosen group's per-layer energies.
        static func layerError(_ m: WhitenedSVDMethod) -> Double {
            m.groups.reduce(0) { sum, g in sum + g.layers.indices.reduce(0) { $0 + g.layerError($1, rank: g.rank) } }
        }

        /// `--group-size 1,2,4`: the chosen groups and the groups left dense cover every (type,
        /// layer) once, shared types by aligned blocks of a candidate size; the budget holds; and
        /// the layer-normalised error left is no more than with any one of the sizes alone.
        @Test func choosesWhereToShare() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 53, layers: 4))
            let c = source.config
            for budget in ["0.3", "0.6"] {
                let (r, m) = try Self.compress(source, ["budget": budget, "allocate": "spectrum", "group-size": "1,2,4"])
                let a = try #require(m.allocation)
                let steps = m.groups.map { $0.type.shape(c).dIn + $0.layers.count * $0.type.shape(c).dOut }
                #expect(a.spent <= a.budget && a.budget - a.spent < max(steps.max() ?? 0, 4 * 96 + 64), "\(a.spent) of \(a.budget)")
                var covered: [String: Int] = [:]
                for g in m.groups {
                    #expect([1, 2, 4].contains(g.layers.count) && g.layers.first! % g.layers.count == 0)
                    if g.layers.count > 1 { #expect(m.options.shared.contains(g.type)) }
                    for l in g.layers { covered[g.type.module(layer: l), default: 0] += 1 }
                }
                for d in a.denseGroups { for l in d.layers { covered[d.type.module(layer: l), default: 0] += 1 } }
                #expect(covered.count == 7 * c.layerCount && covered.values.allSatisfy { $0 == 1 })
                let files = try F.write(r, source: source, tag: "cover-\(budget)")
                #expect(files.manifest!.storedLinearParameters == a.spent)
                #expect(try LlamaModel(files: files, backend: Backends.cpu).logits(F.evalTokens).values.allSatisfy(\.isFinite))
                let chosen = Self.layerError(m)
                #expect(abs(chosen - a.discarded) <= 1e-9 * max(1, chosen))
                for n in ["1", "2", "4"] {
                    let (_, single) = try Self.compress(source, ["budget": budget, "allocate": "spectrum", "group-size": n])
                    #expect(chosen <= Self.layerError(single) * (1 + 1e-9), "sizes 1,2,4: \(chosen), size \(n) alone: \(Self.layerError(single))")
                }
                #expect(FileManager.default.fileExists(atPath: files.path + "/" + WhitenedSVDMethod.errorPictureName))
            }
        }

        /// `--allocate sensitivity`: one probe per (type, layer); each probe's divergence is the
        /// one measured independently (the matrix's own whitened SVD at the probe rank swapped into
        /// the dense model, KL(p_dense ‖ p_probe) in Float64 from both models' whole logits); a
        /// second run reads the probes from beside the cached Grams and chooses the same ranks.
        @Test func sensitivityProbesAreTheDivergence() throws {
            let source = try ModelFiles.open(try TinyModel.write(seed: 54, layers: 2))
            let c = source.config
            let cacheRoot = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-sensitivity-\(getpid())").path
            defer { try? FileManager.default.removeItem(atPath: cacheRoot) }
            func run() throws -> WhitenedSVDMethod {
                // Sizes 1 and 2: every matrix is probed through its own (single-layer) factors.
                let a = MethodArguments(values: ["budget": ["0.4"], "allocate": ["sensitivity"], "probe-windows": ["2"], "group-size": ["1,2"]])
                let m = try MethodRegistry.standard.entry("basis-sharing")!.make(a, c) as! WhitenedSVDMethod
                _ = try Compressor.compress(files: source, backend: Backends.cpu, windows: F.windows, method: m, cache: GramCache(root: cacheRoot))
                return m
            }
            let first = try run()
            let s = try #require(first.allocation?.sensitivity)
            #expect(!s.fromCache && s.weights.count == 7 * c.layerCount && s.weights.values.allSatisfy { $0 > 0 && $0.isFinite })
            // A truncated matrix always moves the output distribution: no probe reads 0.
            #expect(s.probes.values.allSatisfy { $0.error == 0 || $0.kl > 0 }, "\(s.probes)")
            // Independently: q of layer 1 and down of layer 0 at their probe ranks.
            let grams = try Calibration.collectGrams(files: source, backend: Backends.cpu, windows: F.windows)
            let model = try LlamaModel(files: source, backend: Backends.cpu)
            func loss() throws -> Double {
                let nll = try F.windows.prefix(2).flatMap { try model.nextTokenNLL($0) }
                return nll.reduce(0.0) { $0 + Double($1) } / Double(nll.count)
            }
            let base = try loss()
            #expect(abs(base - s.baseLoss) <= 1e-9)
            let windows = Array(F.windows.prefix(2))
            let denseLogits = try windows.map { try model.logits($0) }
            /// Mean over every position of Σ p·(log p − log q), each row's log-softmax in Float64.
            func divergence() throws -> Double {
                var sum = 0.0, count = 0
                for (w, dense) in zip(windows, denseLogits) {
                    let probe = try model.logits(w)
                    for r in 0..<dense.rows {
                        let a = (0..<dense.cols).map { Double(dense[r, $0]) }, b = (0..<dense.cols).map { Double(probe[r, $0]) }
                        let (ma, mb) = (a.max()!, b.max()!)
                        let la = log(a.reduce(0) { $0 + exp($1 - ma) }) + ma, lb = log(b.reduce(0) { $0 + exp($1 - mb) }) + mb
                        sum += (0..<a.count).reduce(0.0) { $0 + exp(a[$1] - la) * ((a[$1] - la) - (b[$1] - lb)) }
                        count += 1
                    }
                }
                return sum / Double(count)
            }
            for (t, l) in [(MatrixType.q, 1), (.down, 0)] {
                let probe = try #require(s.probes[t.module(layer: l)])
                let (dOut, dIn) = t.shape(c)
                let w = try Matrix(rows: dOut, cols: dIn, values: try WeightLoader(files: source, backend: Backends.cpu).hostValues(t.module(layer: l) + ".weight", shape: [dOut, dIn]))
                let g = try WhitenedSVD.factor(
                    type: t, layers: [l], weights: [w], grams: [grams[l][t.input]!], rank: probe.rank, whiten: true, epsilon: 1e-6, backend: Backends.cpu)
                #expect(abs(g.layerError(0, rank: probe.rank) - probe.error) <= 1e-9)
                let original = model.layers[l][t]
                model.layers[l][t] = try DenseLinear(weight: try g.reconstruction(0).asFloat.values, outputSize: dOut, inputSize: dIn, on: Backends.cpu, name: "check")
                let kl = try divergence()
                model.layers[l][t] = original
                // Float32 logits either way; the tolerance is that of two log-sum-exps over the vocabulary.
                #expect(kl > 0 && abs(kl - probe.kl) <= 1e-3 * kl + 1e-7, "\(t.rawValue) \(l): \(kl) vs \(probe.kl)")
            }
            let second = try run()
            #expect(second.allocation?.sensitivity?.fromCache == true)
            #expect(second.groups.map(\.rank) == first.groups.map(\.rank))
            #expect(second.allocation?.sensitivity?.weights == s.weights)
        }
    }
}
