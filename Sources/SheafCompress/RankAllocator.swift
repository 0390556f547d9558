/// Global rank allocation over the spectra of whitened SVDs (`--allocate spectrum`).
///
/// For whitened SVD the calibration-weighted error of keeping rank k of a group is exactly the
/// sum of its discarded whitened σ_j² (SVD-LLM's truncation-aware whitening): ‖X(W − Ŵ)ᵀ‖² =
/// Σ_{j>k} σ_j². Each rank a group keeps costs (d_in + n·d_out) parameters. The allocator
/// chooses all ranks together to minimise the total (normalised) error for a parameter budget:
/// greedily, the step with the most error removed per parameter first. The gains within a
/// group fall (σ is sorted), so every greedy prefix is a Lagrangian solution: it removes the
/// most error of all allocations that spend no more than it does. It stops at the first step
/// that does not fit, so it ends within one rank step of the budget.
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
        public init(energies: [Double], cost: Int, fixed: Int? = nil) { (self.energies, self.cost, self.fixed) = (energies, cost, fixed) }
        var maxRank: Int { energies.count }
    }

    /// Ranks in 1...energies.count (or the fixed one) whose total cost is at most `budget`
    /// parameters, nil when even rank 1 everywhere does not fit.
    public static func spectrum(_ items: [Item], budget: Int, normalisation: Normalisation) -> [Int]? {
        var ranks = items.map { $0.fixed ?? 1 }
        var spent = zip(items, ranks).reduce(0) { $0 + $1.0.cost * $1.1 }
        guard spent <= budget, items.allSatisfy({ $0.maxRank >= 1 }) else { return nil }
        let scale = items.map { item -> Double in
            let total = item.energies.reduce(0, +)
            return normalisation == .matrix && total > 0 ? 1 / total : 1
        }
        // Error removed per parameter by the next rank of item i.
        func gain(_ i: Int) -> Double {
            guard items[i].fixed == nil, ranks[i] < items[i].maxRank else { return -.infinity }
            return items[i].energies[ranks[i]] * scale[i] / Double(items[i].cost)
        }
        var gains = items.indices.map(gain)
        while true {
            var best = -1
            for i in gains.indices where gains[i] > -.infinity && (best < 0 || gains[i] > gains[best]) { best = i }
            guard best >= 0, spent + items[best].cost <= budget else { break }
            ranks[best] += 1
            spent += items[best].cost
            gains[best] = gain(best)
        }
        return ranks
    }

    /// Σ over items of the normalised energy discarded at `ranks`.
    public static func discarded(_ items: [Item], ranks: [Int], normalisation: Normalisation) -> Double {
        zip(items, ranks).reduce(0) { sum, pair in
            let (item, k) = pair, total = item.energies.reduce(0, +)
            let tail = item.energies.dropFirst(k).reduce(0, +)
            return sum + (normalisation == .matrix && total > 0 ? tail / total : tail)
        }
    }
}
