import SheafBackend
import SheafCore
import SheafIO

/// One matrix type over one group of consecutive layers, factored as Wᵢᵀ ≈ B·Cᵢ.
public struct FactoredGroup: Sendable {
    public var type: MatrixType
    public var layers: [Int]
    /// Bᵀ: (rank, dIn), PyTorch orientation.
    public var basisT: Matrix<Float>
    /// Cᵢᵀ per layer: (dOut, rank), PyTorch orientation.
    public var coefficientsT: [Matrix<Float>]
    /// All singular values of the (whitened) stacked matrix, descending.
    public var singularValues: [Double]
    /// Per layer position i and direction j: σ_j²·‖V_ij‖², the part of direction j's energy that
    /// serves layer i (V_ij: layer i's rows of the right singular vector j). Layer i's own
    /// calibration error at rank k is Σ_{j ≥ k} of its row, its ‖XᵢWᵢᵀ‖² the row's total.
    public var layerEnergies: [[Double]]
    public var energy: Double
    public var error: Double
    /// After a coefficient refit: the same error measured with the inputs of the compressed
    /// model (the Grams the refit minimised over).
    public var refitError: Double?
    public var whiteningFallback: Bool
    public var rank: Int { basisT.rows }

    /// Layer position i's relative calibration error ‖Xᵢ(Wᵢ − Ŵᵢ)ᵀ‖²/‖XᵢWᵢᵀ‖² at rank k.
    public func layerError(_ i: Int, rank k: Int) -> Double {
        let row = layerEnergies[i], total = row.reduce(0, +)
        return total > 0 ? row.dropFirst(k).reduce(0, +) / total : 0
    }

    /// The same factors cut to their first k ranks (k ≤ rank), with energy and error read off
    /// the spectrum; the spectrum and per-layer energies are kept whole.
    public func truncated(to k: Int) -> FactoredGroup {
        var g = self
        let dIn = basisT.cols, full = rank
        g.basisT = Matrix(unchecked: k, dIn, Array(basisT.values.prefix(k * dIn)))
        g.coefficientsT = coefficientsT.map { m in
            var values = [Float](repeating: 0, count: m.rows * k)
            for r in 0..<m.rows { for j in 0..<k { values[r * k + j] = m.values[r * full + j] } }
            return Matrix(unchecked: m.rows, k, values)
        }
        let total = singularValues.reduce(0) { $0 + $1 * $1 }, tail = singularValues.dropFirst(k).reduce(0) { $0 + $1 * $1 }
        g.energy = total > 0 ? 1 - tail / total : 1
        g.error = total > 0 ? tail / total : 0
        return g
    }

    /// Wᵢ ≈ Cᵢᵀ·Bᵀ: (dOut, dIn) for layer position `index` in the group.
    public func reconstruction(_ index: Int) throws(SheafError) -> Matrix<Double> {
        try LAPACK.multiply(coefficientsT[index].asDouble, basisT.asDouble)
    }
}

/// SVD-LLM's truncation-aware whitening under Basis Sharing's stacking (arXiv 2410.03765):
/// with the group Gram G = Σᵢ XᵢᵀXᵢ = L·Lᵀ, the stacked A = Lᵀ·[W₁ᵀ | … | Wₙᵀ] (dIn, n·dOut)
/// has the SVD U·Σ·Vᵀ; B = L⁻ᵀ·U_k·Σ_k and Cᵢ = (V_k rows of layer i)ᵀ. Truncating the SVD of A
/// minimises Σᵢ ‖Xᵢ(Wᵢᵀ − B·Cᵢ)‖² over the group, because ‖X·M‖² = ‖Lᵀ·M‖² for any M.
/// The backend computes the two large products (W·L and the triangular solve); Cholesky and
/// SVD run in Float64 LAPACK on the host.
public enum WhitenedSVD {
    /// `weights`: Wᵢ (dOut, dIn) per layer of the group. `grams`: Xᵢᵀ·Xᵢ (dIn, dIn) per layer;
    /// `whiten: false` is plain truncated SVD of the stack (the grams then only weigh the error).
    public static func factor(
        type: MatrixType, layers: [Int], weights: [Matrix<Float>], grams: [Matrix<Double>], rank requested: Int, whiten: Bool,
        epsilon: Double, backend: any Backend
    ) throws(SheafError) -> FactoredGroup {
        guard let first = weights.first, weights.count == layers.count, grams.count == layers.count else {
            throw .invalidArgument(op: "factor \(type.rawValue)", detail: "needs one weight and one Gram per layer of the group")
        }
        let (dOut, dIn) = (first.rows, first.cols), n = weights.count
        for (w, g) in zip(weights, grams) where w.rows != dOut || w.cols != dIn || g.rows != dIn || g.cols != dIn {
            throw .shapeMismatch(op: "factor \(type.rawValue) layers \(layers)", detail: "weight \(w.shape), Gram \(g.shape), expected (\(dOut), \(dIn)) and (\(dIn), \(dIn))")
        }
        let rank = min(requested, dIn, n * dOut)
        guard rank > 0 else { throw .invalidArgument(op: "factor \(type.rawValue)", detail: "rank \(requested) is not positive") }

        // Aᵀ = [W₁; …; Wₙ]·L: (n·dOut, dIn).
        var stacked = [Float]()
        stacked.reserveCapacity(n * dOut * dIn)
        for w in weights { stacked += w.values }
        let aT: Matrix<Double>
        var lower: MatrixView?, fallback = false
        if whiten {
            var g = grams[0]
            for other in grams.dropFirst() { for i in 0..<g.count { g.values[i] += other.values[i] } }
            let chol = try backend.cholesky(g, epsilon: epsilon)
            fallback = chol.usedFallback
            let l = try backend.upload(chol.lower, label: "\(type.rawValue) whitening factor")
            let w = try backend.upload(try Matrix(rows: n * dOut, cols: dIn, values: stacked), label: "\(type.rawValue) stacked weights")
            let out = try backend.zeros(.float64, rows: n * dOut, cols: dIn)
            try backend.multiplyLower(w, l, into: out)
            aT = try backend.download(out)
            lower = l
        } else {
            aT = try Matrix(rows: n * dOut, cols: dIn, values: stacked).asDouble
        }
        if let bad = aT.firstNonFinite {
            throw .nonFinite(op: "factor \(type.rawValue) layers \(layers)", what: "the whitened weights at \(bad)")
        }
        // Aᵀ = U_a·Σ·Vt_a, so A = Vt_aᵀ·Σ·U_aᵀ: U = Vt_aᵀ and V = U_a.
        let (uA, s, vtA) = try LAPACK.svdThroughGram(aT)
        // Bᵀ = Σ_k·U_kᵀ·L⁻¹ = Σ_k·Vt_a[:k]·L⁻¹ (rank, dIn).
        var y = Matrix<Double>.zeros(rows: rank, cols: dIn)
        for r in 0..<rank { for c in 0..<dIn { y[r, c] = s[r] * vtA[r, c] } }
        if let lower {
            let yView = try backend.upload(y, label: "\(type.rawValue) basis")
            try backend.solveLowerRight(yView, lower)
            y = try backend.download(yView)
        }
        if let bad = y.firstNonFinite { throw .nonFinite(op: "factor \(type.rawValue) layers \(layers)", what: "the basis at \(bad)") }
        // Cᵢᵀ = U_a rows of layer i, first k columns: (dOut, rank).
        var coefficients: [Matrix<Float>] = []
        for i in 0..<n {
            var c = Matrix<Float>.zeros(rows: dOut, cols: rank)
            for r in 0..<dOut { for j in 0..<rank { c[r, j] = Float(uA[i * dOut + r, j]) } }
            coefficients.append(c)
        }
        var layerEnergies = [[Double]](repeating: [Double](repeating: 0, count: s.count), count: n)
        for i in 0..<n {
            for r in 0..<dOut {
                let row = (i * dOut + r) * uA.cols
                for j in 0..<min(s.count, uA.cols) { layerEnergies[i][j] += uA.values[row + j] * uA.values[row + j] }
            }
            for j in 0..<s.count { layerEnergies[i][j] *= s[j] * s[j] }
        }
        let total = s.reduce(0) { $0 + $1 * $1 }, kept = s.prefix(rank).reduce(0) { $0 + $1 * $1 }
        var group = FactoredGroup(
            type: type, layers: layers, basisT: y.asFloat, coefficientsT: coefficients, singularValues: s, layerEnergies: layerEnergies,
            energy: total > 0 ? kept / total : 1, error: 0, whiteningFallback: fallback)
        group.error = try weightedError(group, weights: weights, grams: grams)
        return group
    }

    /// Σᵢ tr(Dᵢ·Gᵢ·Dᵢᵀ) / Σᵢ tr(Wᵢ·Gᵢ·Wᵢᵀ) with Dᵢ = Wᵢ − Cᵢᵀ·Bᵀ: the calibration-weighted
    /// relative error ‖X(W − BC)ᵀ‖² / ‖XWᵀ‖² of the factors as stored (float32).
    public static func weightedError(_ group: FactoredGroup, weights: [Matrix<Float>], grams: [Matrix<Double>]) throws(SheafError) -> Double {
        var num = 0.0, den = 0.0
        for (i, (w, g)) in zip(weights, grams).enumerated() {
            let (n, d) = try errorTerms(group, position: i, weight: w, gram: g)
            num += n
            den += d
        }
        // tr(D·G·Dᵀ) ≥ 0 exactly (G is a Gram); a negative sum is rounding noise of an error far
        // below the Float64 resolution of tr(W·G·Wᵀ), reported as 0.
        return den > 0 ? max(0, num) / den : 0
    }

    /// (tr(D·G·Dᵀ), tr(W·G·Wᵀ)) for the layer at `position` of the group.
    static func errorTerms(_ group: FactoredGroup, position: Int, weight w: Matrix<Float>, gram g: Matrix<Double>) throws(SheafError) -> (Double, Double) {
        let wD = w.asDouble
        var d = try group.reconstruction(position)
        for j in 0..<d.count { d.values[j] = wD.values[j] - d.values[j] }
        return (try quadraticTrace(d, g), try quadraticTrace(wD, g))
    }

    /// tr(M·G·Mᵀ) = Σ M ⊙ (M·G).
    static func quadraticTrace(_ m: Matrix<Double>, _ g: Matrix<Double>) throws(SheafError) -> Double {
        let mg = try LAPACK.multiply(m, g)
        var sum = 0.0
        for j in 0..<mg.count { sum += m.values[j] * mg.values[j] }
        return sum
    }

    /// Refits the coefficients with the basis fixed, by least squares on the Gram G' of the
    /// inputs the compressed model feeds this layer: Cᵢ = (BᵀG'B)⁻¹·BᵀG'·Wᵢᵀ. Returns Cᵢᵀ
    /// (dOut, rank) and whether a ridge was needed for BᵀG'B.
    public static func refitCoefficients(
        basisT: Matrix<Float>, weight: Matrix<Float>, gram: Matrix<Double>
    ) throws(SheafError) -> (coefficientsT: Matrix<Float>, ridge: Bool) {
        let b = basisT.asDouble.transposed  // (dIn, rank)
        let p = try LAPACK.multiply(gram, b)  // G'·B: (dIn, rank)
        var m = try LAPACK.multiply(b, transposeA: true, p)  // BᵀG'B: (rank, rank)
        let rhs = try LAPACK.multiply(p, transposeA: true, weight.asDouble, transposeB: true)  // BᵀG'Wᵀ: (rank, dOut)
        if let c = try LAPACK.solvePositiveDefinite(m, rhs) { return (c.transposed.asFloat, false) }
        // Rank-deficient input directions: a relative ridge keeps the solve well posed.
        let scale = (0..<m.rows).reduce(0.0) { $0 + m[$1, $1] } / Double(max(m.rows, 1))
        for i in 0..<m.rows { m[i, i] += 1e-8 * max(scale, 1e-300) }
        guard let c = try LAPACK.solvePositiveDefinite(m, rhs) else {
            throw .notPositiveDefinite(op: "refit", detail: "BᵀG'B (\(m.rows), \(m.rows)) even with a ridge")
        }
        return (c.transposed.asFloat, true)
    }
}
