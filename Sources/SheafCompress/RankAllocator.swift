/// Global rank allocation over the spectra of whitened SVDs (`--allocate spectrum`).
///
/// For whitened SVD the calibration-weighted error of keeping rank k of a group is exactly the
/// sum of its discarded whitened σ_j² (SVD-LLM's truncation-aware whitening): ‖X(W − Ŵ)ᵀ‖² =
/// Σ_{j>k} σ_j². Each rank a group keeps costs (d_in + n·d_out) parameters. The allocator
/// chooses all ranks together to minimise the total (normalised) error for a parameter budget:
/// greedily, the step with the most error removed per parameter first. The gains within a
/// group fall (σ is sorted), so every greedy prefix is a Lagrangian solution: it removes the
/// most error of all allocations that spend no more than it does. It stops at the first step
/// that does not fit, so it ends within one rank step of the budget. A group may also be left
/// dense (`Item.denseCost`) where its factors would cost as much as its weights.
public enum RankAllocator {
    /// How a group's σ_j² are weighed against other groups'.
    public enum Normalisation: String, Sendable, CaseIterable {
        /// σ_j² / Σσ²: each group's relative error ‖X(W − Ŵ)ᵀ‖²/‖XWᵀ‖², summed over groups.
        case matrix
        /// σ_j² as is: the absolute calibration error summed over groups (a matrix whose outputs
        /// are large weighs more).
        case none
    }

    public struct Item: Sendable {
        /// σ_j², descending.
        public var energies: [Double]
        /// Parameters per kept rank: d_in + n·d_out.
        public var cost: Int
        /// A fixed rank (`--rank TYPE=K`), not allocated but paid for.
        public var fixed: Int?
        /// The parameters of the group left dense (n·d_in·d_out, error 0), when that is allowed:
        /// then no rank whose factors cost as much is ever kept.
        public var denseCost: Int?
        public init(energies: [Double], cost: Int, fixed: Int? = nil, denseCost: Int? = nil) {
            (self.energies, self.cost, self.fixed, self.denseCost) = (energies, cost, fixed, denseCost)
        }
        /// The largest rank worth factoring: below the dense cost when the group may stay dense.
        var maxRank: Int {
            guard let d = denseCost else { return energies.count }
            return min(energies.count, RankAllocator.largestRank(cost: cost, denseCost: d))
        }
    }

    /// The largest rank whose factors (`cost` parameters per rank) cost less than the dense
    /// weights: no allocator keeps more.
    static func largestRank(cost: Int, denseCost: Int) -> Int { (denseCost - 1) / cost }

    /// An item's allocation: a rank, or the group left dense.
    public enum Choice: Sendable, Equatable {
        case rank(Int)
        case dense
        public var rank: Int? { if case .rank(let k) = self { k } else { nil } }
    }

    /// Ranks in 1...energies.count (or the fixed one) whose total cost is at most `budget`
    /// parameters, nil when even rank 1 everywhere does not fit. Every group keeps a rank: a
    /// `denseCost` is not offered here (`choices` offers it).
    public static func spectrum(_ items: [Item], budget: Int, normalisation: Normalisation) -> [Int]? {
        let ranked = items.map { Item(energies: $0.energies, cost: $0.cost, fixed: $0.fixed) }
        return choices(ranked, budget: budget, normalisation: normalisation)?.compactMap(\.rank)
    }

    /// As `spectrum`, where an item with a `denseCost` may also be left dense. For such an item
    /// the candidate steps are the next rank and the jump from its current rank to dense (all of
    /// its remaining error for the parameters the jump adds); the best ratio among every item's
    /// candidates is taken first; a jump that does not fit is withdrawn and the greedy goes on, so
    /// it still ends within one rank step of the budget. With dense jumps the result is a (good)
    /// greedy, not a proven optimum: a jump's ratio can exceed the rank steps before it.
    public static func choices(_ items: [Item], budget: Int, normalisation: Normalisation) -> [Choice]? {
        var ranks = items.map { $0.fixed ?? 1 }
        // An item whose rank 1 would already cost its dense weights starts dense.
        var dense = items.map { $0.fixed == nil && $0.denseCost != nil && $0.maxRank < 1 }
        // A dense jump that did not fit is not offered again (smaller rank steps may still fit).
        var jumpRefused = [Bool](repeating: false, count: items.count)
        var spent = items.indices.reduce(0) { $0 + (dense[$1] ? items[$1].denseCost! : items[$1].cost * ranks[$1]) }
        guard spent <= budget, items.allSatisfy({ $0.energies.count >= 1 && ($0.fixed != nil || $0.maxRank >= 1 || $0.denseCost != nil) }) else {
            return nil
        }
        let scale = items.map { item -> Double in
            let total = item.energies.reduce(0, +)
            return normalisation == .matrix && total > 0 ? 1 / total : 1
        }
        // Item i's best next step: (error removed per parameter, its cost, whether it goes dense).
        func step(_ i: Int) -> (ratio: Double, cost: Int, toDense: Bool)? {
            let item = items[i]
            guard item.fixed == nil, !dense[i] else { return nil }
            var best: (Double, Int, Bool)?
            if ranks[i] < item.maxRank { best = (item.energies[ranks[i]] * scale[i] / Double(item.cost), item.cost, false) }
            if let d = item.denseCost, !jumpRefused[i] {
                let jump = d - ranks[i] * item.cost, tail = item.energies.dropFirst(ranks[i]).reduce(0, +) * scale[i]
                if jump > 0, best == nil || tail / Double(jump) > best!.0 { best = (tail / Double(jump), jump, true) }
            }
            return best
        }
        var steps = items.indices.map(step)
        while true {
            var best = -1
            for i in steps.indices where steps[i] != nil && (best < 0 || steps[i]!.ratio > steps[best]!.ratio) { best = i }
            guard best >= 0 else { break }
            if spent + steps[best]!.cost > budget {
                guard steps[best]!.toDense else { break }
                jumpRefused[best] = true
                steps[best] = step(best)
                continue
            }
            spent += steps[best]!.cost
            if steps[best]!.toDense { dense[best] = true } else { ranks[best] += 1 }
            steps[best] = step(best)
        }
        return items.indices.map { dense[$0] ? .dense : .rank(ranks[$0]) }
    }

    /// `gains` made non-increasing by pooling adjacent violators: each run that rises is
    /// replaced by its mean, so the cumulative sum becomes the least concave majorant of the
    /// original's (the same total). A group whose per-layer weights differ (a shared basis whose
    /// directions serve its layers unequally) can have rising weighted gains; the greedy's
    /// one-step look-ahead would stop in front of such a rise, on the ironed gains it sees the
    /// rise's average.
    public static func ironed(_ gains: [Double]) -> [Double] {
        var blocks: [(sum: Double, count: Int)] = []
        for g in gains {
            blocks.append((g, 1))
            while blocks.count > 1, blocks[blocks.count - 2].sum / Double(blocks[blocks.count - 2].count) < blocks[blocks.count - 1].sum / Double(blocks[blocks.count - 1].count) {
                let last = blocks.removeLast()
                blocks[blocks.count - 1].sum += last.sum
                blocks[blocks.count - 1].count += last.count
            }
        }
        return blocks.flatMap { [Double](repeating: $0.sum / Double($0.count), count: $0.count) }
    }

    /// How one set of layers of one matrix type may be covered: by item `item` (one group over
    /// all of them), or, when `parts` is not empty, by the parts instead (smaller groups over
    /// the same layers, each again a choice).
    public struct Cover: Sendable {
        public var item: Int
        public var parts: [Cover]
        public init(item: Int, parts: [Cover] = []) { (self.item, self.parts) = (item, parts) }

        /// The items of the cover that `split` chooses (a cover missing from it is used whole).
        func chosen(_ split: Set<Int>) -> [Int] {
            split.contains(item) ? parts.flatMap { $0.chosen(split) } : [item]
        }
    }

    /// Chooses how to cover each of `covers` (where to share a basis and over how many layers)
    /// and then the ranks of the chosen items (`choices`) for `budget` parameters. The cover is
    /// chosen by Lagrangian relaxation: at a price λ per parameter each item's best is
    /// min(min_k (error left at rank k + λ·k·cost), λ·denseCost), a cover takes itself or its
    /// parts, whichever is cheaper, and λ is bisected to the smallest price whose covers fit the
    /// budget. Every item's energies must be normalised already (they are summed as they are).
    /// Returns, per item, nil when not chosen, else its choice; nil when nothing fits.
    public static func covered(_ items: [Item], covers: [Cover], budget: Int) -> [Choice?]? {
        // One way to cover everything: nothing to price, the greedy alone decides.
        let chosen = covers.allSatisfy({ $0.parts.isEmpty }) ? covers.map(\.item) : lagrangianCover(items, covers: covers, budget: budget)
        guard let chosen, let picks = choices(chosen.map { items[$0] }, budget: budget, normalisation: .none) else { return nil }
        var out = [Choice?](repeating: nil, count: items.count)
        for (i, pick) in zip(chosen, picks) { out[i] = pick }
        return out
    }

    /// The items `covered` keeps: each cover whole or split, at the smallest price λ whose
    /// covers fit the budget; nil when none does.
    static func lagrangianCover(_ items: [Item], covers: [Cover], budget: Int) -> [Int]? {
        // Prefix sums of error left: tails[i][k] = Σ_{j ≥ k} energies[j].
        let tails = items.map { item -> [Double] in
            var t = [Double](repeating: 0, count: item.energies.count + 1)
            for j in stride(from: item.energies.count - 1, through: 0, by: -1) { t[j] = t[j + 1] + item.energies[j] }
            return t
        }
        // Item i at price λ: (Lagrangian value, parameters spent).
        func best(_ i: Int, _ lambda: Double) -> (value: Double, spent: Int) {
            let item = items[i]
            if let k = item.fixed { return (tails[i][k] + lambda * Double(k * item.cost), k * item.cost) }
            var top: (Double, Int) = item.denseCost.map { (lambda * Double($0), $0) } ?? (.infinity, 0)
            for k in 1...max(1, item.maxRank) where k <= item.energies.count {
                let v = tails[i][k] + lambda * Double(k * item.cost)
                if v < top.0 { top = (v, k * item.cost) }
            }
            return top
        }
        // A cover at price λ: (value, spent, covers split into their parts).
        func solve(_ c: Cover, _ lambda: Double, _ split: inout Set<Int>) -> (Double, Int) {
            let whole = best(c.item, lambda)
            guard !c.parts.isEmpty else { return whole }
            var partSplit = Set<Int>(), value = 0.0, spent = 0
            for p in c.parts {
                let r = solve(p, lambda, &partSplit)
                value += r.0
                spent += r.1
            }
            if value < whole.value {
                split.insert(c.item)
                split.formUnion(partSplit)
                return (value, spent)
            }
            return whole
        }
        func split(at lambda: Double) -> (Set<Int>, Int) {
            var s = Set<Int>(), spent = 0
            for c in covers { spent += solve(c, lambda, &s).1 }
            return (s, spent)
        }
        // The largest useful price: every step's error per parameter is below it.
        let most = items.indices.reduce(0.0) { m, i in max(m, tails[i][0] / Double(max(1, items[i].cost))) } * 4 + 1e-300
        guard split(at: most).1 <= budget else { return nil }
        var (lo, hi) = (0.0, most)
        if split(at: lo).1 > budget {
            for _ in 0..<100 {
                let mid = (lo + hi) / 2
                if split(at: mid).1 <= budget { hi = mid } else { lo = mid }
            }
        } else { hi = 0 }
        let chosenSplit = split(at: hi).0
        return covers.flatMap { $0.chosen(chosenSplit) }
    }

    /// The parameters `choices` spend.
    public static func cost(_ items: [Item], _ choices: [Choice]) -> Int {
        zip(items, choices).reduce(0) { sum, p in sum + (p.1.rank.map { $0 * p.0.cost } ?? p.0.denseCost!) }
    }

    /// Σ over items of the normalised energy discarded at `ranks` (a dense item: rank = all).
    public static func discarded(_ items: [Item], ranks: [Int], normalisation: Normalisation) -> Double {
        zip(items, ranks).reduce(0) { sum, pair in
            let (item, k) = pair, total = item.energies.reduce(0, +)
            let tail = item.energies.dropFirst(k).reduce(0, +)
            return sum + (normalisation == .matrix && total > 0 ? tail / total : tail)
        }
    }
}
