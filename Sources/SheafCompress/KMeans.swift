import SheafBackend
import SheafCore

/// K-means of the rows of a matrix on a backend: k-means++ seeding from a seed, then Lloyd's
/// iterations (the backend's distance GEMM, argmin and per-cluster sums) until the objective's
/// relative drop is below `tolerance` or `maxIterations` have run. An empty cluster is re-seeded
/// with the point farthest from its centroid. Deterministic for a seed on a backend.
public enum KMeans {
    public struct Options: Sendable {
        public var clusters: Int
        public var maxIterations: Int
        public var tolerance: Double
        public var seed: UInt64
        public init(clusters: Int, maxIterations: Int = 50, tolerance: Double = 1e-4, seed: UInt64 = 0) {
            (self.clusters, self.maxIterations, self.tolerance, self.seed) = (clusters, maxIterations, tolerance, seed)
        }
    }

    public struct Result: Sendable {
        /// (k, d): each cluster's mean.
        public var centroids: Matrix<Float>
        /// (m): the cluster of each point.
        public var labels: [Int32]
        /// Σᵢ ‖pᵢ − c_{labelᵢ}‖², in Float64 on the host, after each assignment: never increasing.
        public var objectives: [Double]
        public var iterations: Int { objectives.count }
        /// The objective of the returned centroids (the means of the final clusters) and labels:
        /// at most the last of `objectives`.
        public var objective: Double
        /// Empty clusters re-seeded, over all iterations.
        public var reseeded: Int
        /// Whether the run stopped because an assignment would have raised the objective.
        public var stoppedOnIncrease: Bool
    }

    /// k-means++ (Arthur & Vassilvitskii, 2007): the first centre uniformly, each next one with
    /// probability proportional to its squared distance to the nearest centre so far. The m × m
    /// point distances come from one backend GEMM; the draws run on the host (O(k·m)).
    public static func seedPlusPlus(_ points: Matrix<Float>, clusters k: Int, seed: UInt64, backend: any Backend) throws(SheafError) -> Matrix<Float> {
        let m = points.rows
        guard m >= 1, (1...m).contains(k) else {
            throw .invalidArgument(op: "k-means++", detail: "\(k) clusters for \(m) points: need 1 ≤ k ≤ \(m)")
        }
        let p = try backend.upload(points, label: "k-means points")
        let all = try backend.zeros(.float32, rows: m, cols: m)
        try backend.kmeansDistances(points: p, centroids: p, into: all)
        let distances: Matrix<Float> = try backend.download(all)
        var rng = SplitMix64(seed: seed)
        var chosen = [Int(rng.next() % UInt64(m))]
        var nearest = (0..<m).map { Double(distances[$0, chosen[0]]) }
        nearest[chosen[0]] = 0
        while chosen.count < k {
            let total = nearest.reduce(0, +)
            var next: Int
            if total > 0 {
                var target = Double(rng.next() >> 11) / Double(UInt64(1) << 53) * total
                next = m - 1
                for i in 0..<m where nearest[i] > 0 {
                    target -= nearest[i]
                    if target < 0 { next = i; break }
                }
                // Rounding can leave the target just past the last positive weight.
                if nearest[next] == 0 { next = nearest.lastIndex { $0 > 0 }! }
            } else {
                // Every point coincides with a centre (duplicates): take the first unchosen one.
                next = (0..<m).first { !chosen.contains($0) }!
            }
            chosen.append(next)
            for i in 0..<m { nearest[i] = min(nearest[i], Double(distances[i, next])) }
            nearest[next] = 0
        }
        var c = Matrix<Float>.zeros(rows: k, cols: points.cols)
        for (r, i) in chosen.enumerated() { for j in 0..<points.cols { c[r, j] = points[i, j] } }
        return c
    }

    /// Seeds with k-means++ and runs Lloyd's iterations.
    public static func cluster(_ points: Matrix<Float>, options: Options, backend: any Backend) throws(SheafError) -> Result {
        guard (1...max(1, points.rows)).contains(options.clusters), points.rows >= 1 else {
            throw .invalidArgument(op: "k-means", detail: "\(options.clusters) clusters for \(points.rows) points: need 1 ≤ k ≤ \(points.rows)")
        }
        let initial = try seedPlusPlus(points, clusters: options.clusters, seed: options.seed, backend: backend)
        return try lloyd(points, initial: initial, options: options, backend: backend)
    }

    /// Lloyd's iterations from `initial` (k, d). The objective is evaluated exactly (Float64)
    /// for the labels the backend assigned; an iteration that would raise it (possible only by
    /// the float32 distances' rounding near ties) is not taken, and the run stops there.
    public static func lloyd(_ points: Matrix<Float>, initial: Matrix<Float>, options: Options, backend: any Backend) throws(SheafError) -> Result {
        let (m, d, k) = (points.rows, points.cols, initial.rows)
        guard initial.cols == d, k >= 1, k <= m else {
            throw .invalidArgument(op: "k-means", detail: "initial centroids \(initial.shape) for points \(points.shape)")
        }
        let p = try backend.upload(points, label: "k-means points")
        let distances = try backend.zeros(.float32, rows: m, cols: k)
        let labelBuffer = try backend.makeBuffer(.int32, count: m), minima = try backend.makeBuffer(.float32, count: m)
        let sums = try backend.zeros(.float64, rows: k, cols: d), counts = try backend.makeBuffer(.int32, count: k)
        var centroids = initial
        var best: (centroids: Matrix<Float>, labels: [Int32])?
        var objectives: [Double] = []
        var reseeded = 0, stoppedOnIncrease = false
        for _ in 0..<max(1, options.maxIterations) {
            try backend.kmeansDistances(points: p, centroids: try backend.upload(centroids, label: "k-means centroids"), into: distances)
            try backend.kmeansAssign(distances: distances, labels: labelBuffer, minima: minima)
            let labels: [Int32] = try backend.download(labelBuffer)
            let objective = exactObjective(points, centroids, labels)
            if let last = objectives.last, objective > last {
                stoppedOnIncrease = true
                break
            }
            objectives.append(objective)
            best = (centroids, labels)
            if objectives.count >= 2, let previous = objectives.dropLast().last,
                previous - objective <= options.tolerance * previous
            {
                break
            }
            // Update: each cluster's mean (summed in Float64 on the backend).
            try backend.kmeansAccumulate(points: p, labels: labelBuffer, sums: sums, counts: counts)
            let s: Matrix<Double> = try backend.download(sums)
            let n: [Int32] = try backend.download(counts)
            var next = centroids
            for c in 0..<k where n[c] > 0 { for j in 0..<d { next[c, j] = Float(s[c, j] / Double(n[c])) } }
            // An empty cluster takes the point farthest from its own centroid (that point's
            // distance becomes 0, so the objective still falls); several take the next farthest.
            let empty = (0..<k).filter { n[$0] == 0 }
            if !empty.isEmpty {
                let far: [Float] = try backend.download(minima)
                let order = (0..<m).sorted { (far[$0], $1) > (far[$1], $0) }
                for (c, i) in zip(empty, order) { for j in 0..<d { next[c, j] = points[i, j] } }
                reseeded += empty.count
            }
            centroids = next
        }
        guard let best else { throw .invalidArgument(op: "k-means", detail: "no iteration ran") }
        let final = means(points, best.labels, fallback: best.centroids)
        return Result(
            centroids: final, labels: best.labels, objectives: objectives, objective: exactObjective(points, final, best.labels), reseeded: reseeded,
            stoppedOnIncrease: stoppedOnIncrease)
    }

    /// Σᵢ ‖pᵢ − c_{labelᵢ}‖² in Float64.
    public static func exactObjective(_ points: Matrix<Float>, _ centroids: Matrix<Float>, _ labels: [Int32]) -> Double {
        var total = 0.0
        points.values.withUnsafeBufferPointer { p in
            centroids.values.withUnsafeBufferPointer { c in
                let d = points.cols
                for i in 0..<points.rows {
                    let row = i * d, centre = Int(labels[i]) * d
                    for j in 0..<d {
                        let diff = Double(p[row + j]) - Double(c[centre + j])
                        total += diff * diff
                    }
                }
            }
        }
        return total
    }

    /// The mean of each cluster's points (Float64 sums), or `fallback`'s row for an empty one:
    /// the centroids that belong to the final labels.
    static func means(_ points: Matrix<Float>, _ labels: [Int32], fallback: Matrix<Float>) -> Matrix<Float> {
        let (k, d) = (fallback.rows, points.cols)
        var sums = [Double](repeating: 0, count: k * d), counts = [Int](repeating: 0, count: k)
        for i in 0..<points.rows {
            let c = Int(labels[i])
            counts[c] += 1
            for j in 0..<d { sums[c * d + j] += Double(points[i, j]) }
        }
        var out = fallback
        for c in 0..<k where counts[c] > 0 { for j in 0..<d { out[c, j] = Float(sums[c * d + j] / Double(counts[c])) } }
        return out
    }
}
