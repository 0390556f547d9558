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
            #expect(message(["allocate": "sensitivity"]).contains("--allocate must be one of uniform, spectrum, got 'sensitivity'"))
            #expect(message(["budget": "1.5", "allocate": "spectrum"]).contains("--budget must be in (0, 1), got 1.5"))
            #expect(message(["budget": "0.2", "ratio": "0.2"]).contains("--budget and --ratio are the same fraction"))
            #expect(message(["normalise": "layer"]).contains("--normalise must be one of matrix, none"))
        }
    }
}
