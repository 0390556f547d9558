import Foundation
import SheafCore

/// The outcome of comparing one op on one backend against the `reference` backend.
public struct ParityResult: Sendable, Codable {
    public var op: String
    public var backend: String
    public var shape: String
    /// The measured error: normalised MSE Σ(a−b)²/Σb² for outputs, or the invariant's
    /// relative residual for factorisations.
    public var error: Double
    public var tolerance: Double
    /// Empty when passed; else what failed first (guard band, NaN, infinity, tolerance).
    public var failure: String
    public var passed: Bool { failure.isEmpty }
}

/// Backend-versus-reference checks, shared by `sheaf doctor` and the parity test suite.
/// Each check, in order: guard bands around the output untouched -> no NaN -> infinities
/// agree -> error under the op's tolerance.
public enum Parity {
    // Tolerances, each derived from the op's operation count and the unit roundoff (see
    // `Roundoff`): worst-case bounds that hold for any summation order or blocking a BLAS or a
    // kernel may choose, not values tuned to one machine. The reference's own Float64 error is
    // below 2⁻⁵³·n and is neglected next to Float32's. One line each says how.

    /// A Float32 product of `k` terms, scaled by α and added to β·C, stored as Float32: k + 3
    /// roundings per output.
    public static func productTolerance(k: Int) -> Double { Roundoff.nmse(terms: k + 3) }
    /// Float64 arithmetic on exact inputs (Float32 widened, or Float64): `n` Float64 roundings.
    public static func float64Tolerance(n: Int) -> Double { Roundoff.nmse(terms: n + 1, unit: Roundoff.float64) }
    /// An element-wise Float32 op whose result passes through `ulps` ulps of error in all (an ulp
    /// is at most 2u relative): no sum, so no growth with size; κ = 1.
    public static func elementwiseTolerance(ulps: Double) -> Double { (2 * ulps * Roundoff.float32) * (2 * ulps * Roundoff.float32) }
    /// ‖A + shift·I − LLᵀ‖_F / ‖A‖_F of a Float64 Cholesky factor: |ΔA| ≤ γ_{n+1}·|L||Lᵀ| (Higham,
    /// Thm 10.3) and ‖|L||Lᵀ|‖_F ≤ ‖L‖_F² = trace(A + shift·I) ≤ √n·‖A‖_F + n·|shift|.
    public static func factorTolerance(n: Int, normA: Double, shift: Double) -> Double {
        Roundoff.gamma(n + 1, unit: Roundoff.float64) * (Double(n).squareRoot() + Double(n) * abs(shift) / max(normA, .leastNormalMagnitude))
    }

    /// softmax(q·kᵀ/√hd)·v on data in [−1, 1]: a score errs by δ ≤ γ_{hd+2}·√hd in absolute terms,
    /// so each weight exp(s − max)/Σ by 2δ plus exp (3 ulp), the sum of `keys` terms and the
    /// division: ≤ 2δ + γ_{keys+12} relative; Σ p·v adds γ_keys relative to Σ p·|v|, and for
    /// zero-mean v, (Σ p|v|)² / (Σ p v)² ≤ keys in expectation (κ).
    public static func attentionTolerance(keys: Int, headDim: Int) -> Double {
        let delta = Roundoff.gamma(headDim + 2, unit: Roundoff.float32) * Double(headDim).squareRoot()
        let relative = 2 * delta + 2 * Roundoff.gamma(keys + 12, unit: Roundoff.float32)
        return relative * relative * Double(keys)
    }

    /// ‖x‖² − 2x·c + ‖c‖² with d-term products and 3 more roundings errs by γ_{d+3}·Mᵢⱼ, Mᵢⱼ =
    /// ‖xᵢ‖² + 2Σ|xᵢ||cⱼ| + ‖cⱼ‖²; bounded from the data, since close points cancel.
    static func distanceTolerance(_ points: Matrix<Float>, _ centroids: Matrix<Float>) -> Double {
        let g = Roundoff.gamma(points.cols + 3, unit: Roundoff.float32)
        var num = 0.0, den = 0.0
        for i in 0..<points.rows {
            for j in 0..<centroids.rows {
                var magnitude = 0.0, distance = 0.0
                for t in 0..<points.cols {
                    let (x, c) = (Double(points[i, t]), Double(centroids[j, t]))
                    magnitude += x * x + 2 * abs(x * c) + c * c
                    distance += (x - c) * (x - c)
                }
                num += g * g * magnitude * magnitude
                den += distance * distance
            }
        }
        return den == 0 ? num : num / den
    }

    /// nll = m + log Σ exp(x − m) − x_t, bounded row by row from the data: x − m rounds by
    /// u·(max − min), exp by 3 ulp, the positive sum of V terms by γ_V (relative), log by 3 ulp of
    /// log Σ ≤ log V, and the last add and subtract by u·(|m| + log V + |x_t|) each.
    static func crossEntropyTolerance(_ logits: Matrix<Float>, targets: [Int32], nll reference: [Float]) -> Double {
        let u = Roundoff.float32, v = logits.cols, logV = Foundation.log(Double(max(v, 1)))
        var num = 0.0, den = 0.0
        for r in 0..<logits.rows {
            let row = (0..<v).map { Double(logits[r, $0]) }
            let (hi, lo) = (row.max() ?? 0, row.min() ?? 0), xt = row[Int(targets[r])]
            let e = Roundoff.gamma(v, unit: u) + u * ((hi - lo) + 6 + 6 * logV + 2 * (abs(hi) + logV + abs(xt)))
            num += e * e
            den += Double(reference[r]) * Double(reference[r])
        }
        return den == 0 ? num : num / den
    }

    /// kl = S/Z_a − m_a + m_b − log Z_a + log Z_b (see `Backend.klDivergence`), bounded row by
    /// row: each e^(a − m_a) is off by δ_a = u·(max a − min a) + 3u relative (the shift, then
    /// exp), so Z_a by δ_a + γ_V and log Z_a by as much absolutely (likewise for b); each term
    /// of S by δ_a + 2u (a − b and the product), the sum by γ_V of Σ|terms|, so S/Z_a by
    /// (δ_a + 2u + γ_V)·Σ p|a − b| + |S/Z_a|·(δ_a + γ_V); the Float64 adds are exact enough.
    static func klDivergenceTolerance(_ a: Matrix<Float>, _ b: Matrix<Float>, kl reference: [Float]) -> Double {
        let u = Roundoff.float32, v = a.cols, gammaV = Roundoff.gamma(v, unit: u)
        var num = 0.0, den = 0.0
        for r in 0..<a.rows {
            let x = (0..<v).map { Double(a[r, $0]) }, y = (0..<v).map { Double(b[r, $0]) }
            let (ma, mb) = (x.max() ?? 0, y.max() ?? 0)
            let deltaA = u * (ma - (x.min() ?? 0)) + 3 * u, deltaB = u * (mb - (y.min() ?? 0)) + 3 * u
            let za = x.reduce(0.0) { $0 + Foundation.exp($1 - ma) }
            var (spread, shortcut) = (0.0, 0.0)
            for c in 0..<v {
                let p = Foundation.exp(x[c] - ma) / za
                spread += p * abs(x[c] - y[c])
                shortcut += p * (x[c] - y[c])
            }
            let e = (deltaA + 2 * u + gammaV) * spread + abs(shortcut) * (deltaA + gammaV)
                + (deltaA + gammaV) + (deltaB + gammaV) + u * Double(reference[r])
            num += e * e
            den += Double(reference[r]) * Double(reference[r])
        }
        return den == 0 ? num : num / den
    }

    static let guardValue: Float = -7777.25
    static let guardDouble: Double = -7777.25

    /// An operand placed inside a larger buffer: `pad` columns on each side and a row above and
    /// below are guard band, filled with `guardValue`, which the op must leave untouched.
    struct Guarded {
        let view: MatrixView
        let pad: Int

        init<T: DeviceScalar & BinaryFloatingPoint>(
            _ backend: any Backend, _ m: Matrix<T>, pad: Int, guardValue: T
        ) throws(SheafError) {
            let stride = m.cols + 2 * pad
            var all = [T](repeating: guardValue, count: (m.rows + 2) * stride)
            for r in 0..<m.rows { for c in 0..<m.cols { all[(r + 1) * stride + pad + c] = m[r, c] } }
            let buffer = try backend.upload(all, label: "guarded operand")
            view = try MatrixView(buffer, rows: m.rows, cols: m.cols, rowStride: stride, offset: stride + pad)
            self.pad = pad
        }

        /// The interior, or a failure naming the first changed guard element.
        func read<T: DeviceScalar & BinaryFloatingPoint>(_ backend: any Backend, guardValue: T)
            throws(SheafError) -> (Matrix<T>, String)
        {
            let all: [T] = try backend.download(view.buffer)
            for (i, v) in all.enumerated() {
                let r = i / view.rowStride - 1, c = i % view.rowStride - pad
                let inside = r >= 0 && r < view.rows && c >= 0 && c < view.cols
                if !inside && v != guardValue {
                    return (Matrix(rows: 0, cols: 0, repeating: 0), "guard band changed at buffer element \(i) (\(v))")
                }
            }
            return (try backend.download(view), "")
        }
    }

    /// Normalised MSE, or a failure for NaN or disagreeing infinities.
    public static func compare<T: BinaryFloatingPoint>(_ got: [T], _ want: [T]) -> (error: Double, failure: String) {
        guard got.count == want.count else { return (.infinity, "length \(got.count) vs \(want.count)") }
        if let i = got.firstIndex(where: { $0.isNaN }) { return (.nan, "NaN at element \(i)") }
        var num = 0.0, den = 0.0
        for (a, b) in zip(got, want) {
            if a.isInfinite || b.isInfinite {
                if a != b { return (.infinity, "infinity disagrees (\(a) vs \(b))") }
                continue
            }
            num += (Double(a) - Double(b)) * (Double(a) - Double(b))
            den += Double(b) * Double(b)
        }
        return (den == 0 ? num : num / den, "")
    }

    static func result(
        _ op: String, _ backend: any Backend, _ shape: String, _ error: Double, _ tolerance: Double, _ failure: String
    ) -> ParityResult {
        let failed = !failure.isEmpty ? failure : error <= tolerance ? "" : "error \(error) above tolerance \(tolerance)"
        return ParityResult(
            op: op, backend: backend.kind.rawValue, shape: shape, error: error, tolerance: tolerance, failure: failed)
    }

    static func input(_ backend: any Backend, _ m: Matrix<Float>, strided: Bool) throws(SheafError) -> MatrixView {
        strided ? try Guarded(backend, m, pad: 3, guardValue: 0).view : try backend.upload(m)
    }

    /// Runs `op` on both backends with `start` as the guarded output and compares the results:
    /// the first guard-band failure, else the normalised MSE and any NaN/infinity failure.
    static func compareOutputs<T: DeviceScalar & BinaryFloatingPoint>(
        _ backend: any Backend, _ reference: any Backend, start: Matrix<T>, pad: Int, guardValue: T,
        _ op: (any Backend, MatrixView) throws(SheafError) -> Void
    ) throws(SheafError) -> (error: Double, failure: String) {
        var outs: [Matrix<T>] = []
        for be in [backend, reference] {
            let out = try Guarded(be, start, pad: pad, guardValue: guardValue)
            try op(be, out.view)
            try be.synchronize()
            let (values, failure) = try out.read(be, guardValue: guardValue)
            if !failure.isEmpty { return (.nan, failure) }
            outs.append(values)
        }
        return compare(outs[0].values, outs[1].values)
    }

    // MARK: the ops

    public static func gemm(
        _ backend: any Backend, _ reference: any Backend, m: Int, n: Int, k: Int, transposeA: Bool,
        transposeB: Bool, alpha: Float = 1, beta: Float = 0, strided: Bool = false, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let a = Matrix<Float>.random(rows: transposeA ? k : m, cols: transposeA ? m : k, seed: seed)
        let b = Matrix<Float>.random(rows: transposeB ? n : k, cols: transposeB ? k : n, seed: seed &+ 1)
        let c = Matrix<Float>.random(rows: m, cols: n, seed: seed &+ 2)
        let (error, f) = try compareOutputs(backend, reference, start: c, pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.gemm(
                input(be, a, strided: strided), transposeA: transposeA, input(be, b, strided: strided),
                transposeB: transposeB, into: out, alpha: alpha, beta: beta)
        }
        let shape = "\(m)x\(n)x\(k) \(transposeA ? "T" : "N")\(transposeB ? "T" : "N")\(strided ? " strided" : "")"
        return result("gemm", backend, shape, error, productTolerance(k: k), f)
    }

    /// Accumulates `chunks` chunks of (rows, d) into a Gram that starts from a random symmetric matrix.
    public static func gram(
        _ backend: any Backend, _ reference: any Backend, rows: Int, d: Int, chunks: Int = 2, strided: Bool = false,
        seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let start = symmetric(d, seed: seed)
        let (error, f) = try compareOutputs(backend, reference, start: start, pad: 1, guardValue: guardDouble) {
            (be, g) throws(SheafError) in
            for chunk in 0..<chunks {
                let x = Matrix<Float>.random(rows: rows, cols: d, seed: seed &+ UInt64(10 + chunk))
                try be.accumulateGram(input(be, x, strided: strided), into: g)
            }
        }
        return result(
            "gram", backend, "\(chunks)x(\(rows), \(d))\(strided ? " strided" : "")", error,
            // Each chunk is a Float32 product of `rows` terms; the chunks add in Float64 (DESIGN.md).
            productTolerance(k: rows), f)
    }

    /// A random symmetric (n, n) matrix.
    static func symmetric(_ n: Int, seed: UInt64) -> Matrix<Double> {
        var rng = SplitMix64(seed: seed)
        var m = Matrix<Double>.zeros(rows: n, cols: n)
        for i in 0..<n { for j in i..<n { m[i, j] = rng.nextSignedUnitDouble(); m[j, i] = m[i, j] } }
        return m
    }

    /// A symmetric positive-definite (n, n) matrix: XᵀX/rows + 0.1·I with X random (2n, n).
    public static func spd(_ n: Int, seed: UInt64) -> Matrix<Double> {
        let x = Matrix<Float>.random(rows: 2 * n, cols: n, seed: seed).asDouble
        var a = Matrix<Double>.zeros(rows: n, cols: n)
        for r in 0..<x.rows { for i in 0..<n { for j in 0..<n { a[i, j] += x[r, i] * x[r, j] } } }
        for i in 0..<n { for j in 0..<n { a[i, j] /= Double(x.rows) } }
        for i in 0..<n { a[i, i] += 0.1 }
        return a
    }

    /// ‖A + shift·I − LLᵀ‖_F / ‖A‖_F, and whether L is lower-triangular.
    public static func choleskyResidual(_ a: Matrix<Double>, _ f: CholeskyFactor) -> (Double, Bool) {
        let n = a.rows, l = f.lower
        var num = 0.0, den = 0.0, lower = true
        for i in 0..<n {
            for j in 0..<n {
                if j > i && l[i, j] != 0 { lower = false }
                var s = 0.0
                for p in 0...min(i, j) { s += l[i, p] * l[j, p] }
                let target = a[i, j] + (i == j ? f.shift : 0)
                num += (target - s) * (target - s)
                den += a[i, j] * a[i, j]
            }
        }
        return ((num / den).squareRoot(), lower)
    }

    /// Cholesky of an SPD matrix, or with `indefinite` of one shifted to λmin < 0 so the
    /// fallback must run; the factor's residual is the error, and both backends must agree on
    /// whether the fallback ran and on the shift.
    public static func cholesky(_ backend: any Backend, _ reference: any Backend, n: Int, indefinite: Bool, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        var a = spd(n, seed: seed)
        if indefinite {
            let lambdaMin = ReferenceBackend.jacobiEigenvalues(a).min() ?? 0
            for i in 0..<n { a[i, i] -= 0.5 + lambdaMin }
        }
        let f = try backend.cholesky(a), r = try reference.cholesky(a)
        let (residual, lower) = choleskyResidual(a, f)
        let normA = a.values.reduce(0) { $0 + $1 * $1 }.squareRoot()
        var failure = lower ? "" : "factor is not lower-triangular"
        if f.usedFallback != indefinite || r.usedFallback != indefinite {
            failure = "fallback used: \(f.usedFallback), reference: \(r.usedFallback), expected \(indefinite)"
        } else if abs(f.shift - r.shift) > 2 * Roundoff.gamma(n * n, unit: Roundoff.float64) * normA {
            // shift = −λmin + ε; a backward-stable symmetric eigensolver (dsyevd, Jacobi) errs by at
            // most p(n)·u·‖A‖ with p(n) ≤ n² (Wilkinson), and the two solvers' errors add.
            failure = "shift \(f.shift) vs reference \(r.shift)"
        }
        return result(
            "cholesky", backend, "(\(n), \(n))\(indefinite ? " indefinite" : "")", residual,
            factorTolerance(n: n, normA: normA, shift: f.shift), failure)
    }

    public static func multiplyLower(
        _ backend: any Backend, _ reference: any Backend, m: Int, n: Int, strided: Bool = false, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let w = Matrix<Float>.random(rows: m, cols: n, seed: seed)
        let l = try reference.cholesky(spd(n, seed: seed &+ 1)).lower
        let zeros = Matrix<Double>.zeros(rows: m, cols: n)
        let (error, f) = try compareOutputs(backend, reference, start: zeros, pad: 1, guardValue: guardDouble) {
            (be, out) throws(SheafError) in
            let lv = strided ? try Guarded(be, l, pad: 2, guardValue: 0).view : try be.upload(l)
            try be.multiplyLower(input(be, w, strided: strided), lv, into: out)
        }
        return result(
            "multiplyLower", backend, "(\(m), \(n))\(strided ? " strided" : "")", error, float64Tolerance(n: n), f)
    }

    public static func solveLower(
        _ backend: any Backend, _ reference: any Backend, m: Int, n: Int, strided: Bool = false, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let y = Matrix<Float>.random(rows: m, cols: n, seed: seed).asDouble
        let l = try reference.cholesky(spd(n, seed: seed &+ 1)).lower
        let (error, f) = try compareOutputs(backend, reference, start: y, pad: strided ? 2 : 0, guardValue: guardDouble) {
            (be, out) throws(SheafError) in
            let lv = strided ? try Guarded(be, l, pad: 1, guardValue: 0).view : try be.upload(l)
            try be.solveLowerRight(out, lv)
        }
        return result(
            "solveLowerRight", backend, "(\(m), \(n))\(strided ? " strided" : "")", error,
            // Backward stable: (L + ΔL)x = y with |ΔL| ≤ γ_n|L|, so ‖Δx‖/‖x‖ ≤ κ₂(L)·√n·γ_n. L is the
            // Cholesky factor of XᵀX/2n + 0.1·I with |x| ≤ 1: λ ∈ [0.1, n + 0.1], κ₂(L)² ≤ 10n + 1.
            Double(10 * n + 1) * Double(n) * Roundoff.gamma(n, unit: Roundoff.float64) * Roundoff.gamma(n, unit: Roundoff.float64), f)
    }

    public static func kmeansDistances(
        _ backend: any Backend, _ reference: any Backend, m: Int, k: Int, d: Int, strided: Bool = false,
        seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let p = Matrix<Float>.random(rows: m, cols: d, seed: seed)
        let c = Matrix<Float>.random(rows: k, cols: d, seed: seed &+ 1)
        let zeros = Matrix<Float>.zeros(rows: m, cols: k)
        let (error, f) = try compareOutputs(backend, reference, start: zeros, pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.kmeansDistances(
                points: input(be, p, strided: strided), centroids: input(be, c, strided: strided), into: out)
        }
        return result(
            "kmeansDistances", backend, "m \(m) k \(k) d \(d)\(strided ? " strided" : "")", error,
            distanceTolerance(p, c), f)
    }

    /// Assignment on the same distance matrix (with planted ties): labels and minima must match
    /// exactly.
    public static func kmeansAssign(_ backend: any Backend, _ reference: any Backend, m: Int, k: Int, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        var dist = Matrix<Float>.random(rows: m, cols: k, seed: seed)
        for i in stride(from: 0, to: m, by: 3) where k > 1 { dist[i, k - 1] = -2; dist[i, k / 2] = -2 }  // ties
        var got: [([Int32], [Float])] = []
        for be in [backend, reference] {
            let labels = try be.makeBuffer(.int32, count: m), minima = try be.makeBuffer(.float32, count: m)
            try be.kmeansAssign(distances: be.upload(dist), labels: labels, minima: minima)
            try be.synchronize()
            got.append((try be.download(labels), try be.download(minima)))
        }
        let mismatches = zip(got[0].0, got[1].0).filter { $0 != $1 }.count
        let failure = mismatches == 0 && got[0].1 == got[1].1 ? "" : "\(mismatches) labels differ"
        return result("kmeansAssign", backend, "m \(m) k \(k)", Double(mismatches), 0, failure)
    }

    /// Cluster sums and counts for random labels (some clusters empty).
    public static func kmeansAccumulate(
        _ backend: any Backend, _ reference: any Backend, m: Int, k: Int, d: Int, strided: Bool = false,
        seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let p = Matrix<Float>.random(rows: m, cols: d, seed: seed)
        var rng = SplitMix64(seed: seed &+ 5)
        let labels = (0..<m).map { _ in Int32(rng.next() % UInt64(max(1, k - k / 4))) }  // last quarter empty
        var outs: [(Matrix<Double>, [Int32])] = []
        var failure = ""
        for be in [backend, reference] {
            let sums = try Guarded(be, Matrix<Double>.zeros(rows: k, cols: d), pad: 1, guardValue: guardDouble)
            let counts = try be.makeBuffer(.int32, count: k)
            try be.kmeansAccumulate(
                points: input(be, p, strided: strided), labels: be.upload(labels), sums: sums.view, counts: counts)
            try be.synchronize()
            let (values, f) = try sums.read(be, guardValue: guardDouble)
            if failure.isEmpty { failure = f }
            outs.append((values, try be.download(counts)))
        }
        var (error, f) = failure.isEmpty ? compare(outs[0].0.values, outs[1].0.values) : (.nan, failure)
        if f.isEmpty && outs[0].1 != outs[1].1 { f = "counts differ" }
        return result(
            // Float64 sums of at most m Float32 points.
            "kmeansAccumulate", backend, "m \(m) k \(k) d \(d)\(strided ? " strided" : "")", error, float64Tolerance(n: m), f)
    }

    // MARK: forward-pass ops

    public static func rmsNorm(_ backend: any Backend, _ reference: any Backend, rows: Int, d: Int, strided: Bool = false, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        let x = Matrix<Float>.random(rows: rows, cols: d, seed: seed)
        let w = Matrix<Float>.random(rows: 1, cols: d, seed: seed &+ 1)
        let (error, f) = try compareOutputs(backend, reference, start: Matrix<Float>.zeros(rows: rows, cols: d), pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.rmsNorm(input(be, x, strided: strided), weight: be.upload(w), eps: 1e-5, into: out)
        }
        // A positive sum of d squares (relative γ_d, halved by the square root), then /d, +ε, rsqrt
        // (≤ 2 ulp in OpenCL), ·scale, ·w: γ_{d+8} relative per output, no cancellation (κ = 1).
        let bound = Roundoff.gamma(d + 8, unit: Roundoff.float32)
        return result("rmsNorm", backend, "(\(rows), \(d))\(strided ? " strided" : "")", error, bound * bound, f)
    }

    public static func rope(
        _ backend: any Backend, _ reference: any Backend, tokens: Int, heads: Int, headDim: Int, offset: Int, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let x = Matrix<Float>.random(rows: tokens, cols: heads * headDim, seed: seed)
        let (error, f) = try compareOutputs(backend, reference, start: x, pad: 3, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.rope(out, headDim: headDim, positionOffset: offset, theta: 10_000)
        }
        // The angle in Float64, cos and sin rounded to Float32 (1 rounding each), a·c − b·s (3): γ_5
        // relative to |a||c| + |b||s|, whose square is at most twice the pair's a² + b² (κ = 2).
        // An angle computed in Float32 errs by u·position and fails this, as it should at 2000.
        let bound = Roundoff.gamma(5, unit: Roundoff.float32)
        return result("rope", backend, "\(tokens) tokens \(heads)x\(headDim) from \(offset)", error, 2 * bound * bound, f)
    }

    public static func attention(
        _ backend: any Backend, _ reference: any Backend, queries: Int, keys: Int, heads: Int, kvHeads: Int, headDim: Int,
        seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let q = Matrix<Float>.random(rows: queries, cols: heads * headDim, seed: seed)
        let k = Matrix<Float>.random(rows: keys, cols: kvHeads * headDim, seed: seed &+ 1)
        let v = Matrix<Float>.random(rows: keys, cols: kvHeads * headDim, seed: seed &+ 2)
        let zeros = Matrix<Float>.zeros(rows: queries, cols: heads * headDim)
        let (error, f) = try compareOutputs(backend, reference, start: zeros, pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.causalAttention(
                q: input(be, q, strided: true), k: input(be, k, strided: true), v: be.upload(v), into: out, heads: heads,
                kvHeads: kvHeads, headDim: headDim)
        }
        return result(
            "causalAttention", backend, "q \(queries) k \(keys) heads \(heads)/\(kvHeads)x\(headDim)", error,
            attentionTolerance(keys: keys, headDim: headDim), f)
    }

    public static func siluMultiply(_ backend: any Backend, _ reference: any Backend, rows: Int, cols: Int, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        var g = Matrix<Float>.random(rows: rows, cols: cols, seed: seed)
        for i in 0..<g.count { g.values[i] *= 12 }  // into the saturating tails of the sigmoid
        let u = Matrix<Float>.random(rows: rows, cols: cols, seed: seed &+ 1)
        let (error, f) = try compareOutputs(backend, reference, start: Matrix<Float>.zeros(rows: rows, cols: cols), pad: 1, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.siluMultiply(gate: input(be, g, strided: true), up: be.upload(u), into: out)
        }
        // g·u/(1 + exp(−g)): exp ≤ 3 ulp (OpenCL; the cpu loop's ≤ 2), division ≤ 2.5 ulp (OpenCL),
        // the add and two products 0.5 ulp each: 7 ulp.
        return result("siluMultiply", backend, "(\(rows), \(cols))", error, elementwiseTolerance(ulps: 7), f)
    }

    public static func add(_ backend: any Backend, _ reference: any Backend, rows: Int, cols: Int, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        let x = Matrix<Float>.random(rows: rows, cols: cols, seed: seed)
        let y = Matrix<Float>.random(rows: rows, cols: cols, seed: seed &+ 1)
        let (error, f) = try compareOutputs(backend, reference, start: y, pad: 1, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.add(input(be, x, strided: true), into: out)
        }
        // One correctly rounded Float32 add, against the reference's own rounding of the exact sum.
        return result("add", backend, "(\(rows), \(cols))", error, elementwiseTolerance(ulps: 1), f)
    }

    /// Random 16-bit patterns of `scalar` (float16 or bfloat16), finite ones only plus ±infinity
    /// in the first row, in a strided view (stride cols + 5, offset 3); exact, so the error is 0.
    public static func convertToFloat32(
        _ backend: any Backend, _ reference: any Backend, rows: Int, cols: Int, scalar: ScalarType, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let stride = cols + 5, offset = 3
        var rng = SplitMix64(seed: seed)
        var bits = [UInt16](repeating: 0x7E00, count: offset + rows * stride)  // a NaN pattern outside the view
        for r in 0..<rows {
            for c in 0..<cols {
                var b = UInt16(truncatingIfNeeded: rng.next())
                // Exponent all ones is infinity or NaN: keep it only as ±infinity in row 0.
                let exponentMask: UInt16 = scalar == .float16 ? 0x7C00 : 0x7F80
                if b & exponentMask == exponentMask { b = r == 0 ? (b & 0x8000) | exponentMask : b & ~0x4000 }
                bits[offset + r * stride + c] = b
            }
        }
        let (error, f) = try compareOutputs(backend, reference, start: Matrix<Float>.zeros(rows: rows, cols: cols), pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            let buffer = try withBytes(of: bits) { (raw) throws(SheafError) in try be.uploadBytes(raw, as: scalar) }
            try be.convertToFloat32(try MatrixView(buffer, rows: rows, cols: cols, rowStride: stride, offset: offset), into: out)
        }
        // A conversion: exact.
        return result("convertToFloat32", backend, "\(scalar) (\(rows), \(cols)) stride \(stride)", error, 0, f)
    }

    /// Random codes of `bits` in a strided uint8 view (stride bytesPerRow + 3, offset 5) with
    /// random minima and steps (strided), `group` not dividing `n` (a short last group); W or Wᵀ.
    /// The same arithmetic everywhere, so the error must be 0.
    public static func dequantizeRows(
        _ backend: any Backend, _ reference: any Backend, rows: Int, n: Int, bits: Int, group: Int, transposed: Bool, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let rowBytes = (n * bits + 7) / 8, stride = rowBytes + 3, offset = 5, groups = (n + group - 1) / group
        var rng = SplitMix64(seed: seed)
        let codes = (0..<(offset + rows * stride)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let minima = Matrix<Float>.random(rows: rows, cols: groups, seed: seed &+ 1)
        var steps = Matrix<Float>.random(rows: rows, cols: groups, seed: seed &+ 2)
        for i in steps.values.indices { steps.values[i] = abs(steps.values[i]) * 0.01 }
        let start = Matrix<Float>.zeros(rows: transposed ? n : rows, cols: transposed ? rows : n)
        let (error, f) = try compareOutputs(backend, reference, start: start, pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            let buffer = try withBytes(of: codes) { (raw) throws(SheafError) in try be.uploadBytes(raw, as: .uint8) }
            try be.dequantizeRows(
                codes: try MatrixView(buffer, rows: rows, cols: rowBytes, rowStride: stride, offset: offset),
                minima: try input(be, minima, strided: true), steps: try input(be, steps, strided: true), bits: bits, group: group,
                into: out, transposed: transposed)
        }
        return result(
            "dequantizeRows", backend, "\(bits)-bit (\(rows), \(n)) group \(group)\(transposed ? " transposed" : "")", error, 0, f)
    }

    /// One row x (n) times a stored weight: `scalar` float16 or bfloat16 W (n, m) in a strided
    /// view (stride m + 3, offset 2), or, with `bits`, a quantised T (m, n) with random codes in
    /// groups of `group`; y accumulated onto when `accumulate`. The weights are exact in every
    /// backend (a quantised one may round m + q·s once more where it is fused), so the error is
    /// that of an n-term float32 sum.
    public static func gemvStored(
        _ backend: any Backend, _ reference: any Backend, n: Int, m: Int, scalar: ScalarType? = nil, bits: Int? = nil, group: Int = 64,
        accumulate: Bool, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let x = Matrix<Float>.random(rows: 1, cols: n, seed: seed)
        let start = Matrix<Float>.random(rows: 1, cols: m, seed: seed &+ 1)
        var rng = SplitMix64(seed: seed &+ 2)
        let (stride, offset) = (m + 3, 2)
        var halves = [UInt16](repeating: 0x7E00, count: offset + n * stride)  // NaN outside the view
        let weights = Matrix<Float>.random(rows: n, cols: m, seed: seed &+ 3)
        for i in 0..<n {
            for j in 0..<m {
                halves[offset + i * stride + j] = scalar == .bfloat16 ? HalfFloat.floatToBF16(weights[i, j]) : HalfFloat.floatToF16(weights[i, j])
            }
        }
        let (b, g) = (bits ?? 8, min(group, n))
        let rowBytes = (n * b + 7) / 8, groups = (n + g - 1) / g
        let codes = (0..<(m * rowBytes)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let minima = Matrix<Float>.random(rows: m, cols: groups, seed: seed &+ 4)
        var steps = Matrix<Float>.random(rows: m, cols: groups, seed: seed &+ 5)
        for i in steps.values.indices { steps.values[i] = abs(steps.values[i]) / Float(1 << b) }
        let (error, f) = try compareOutputs(backend, reference, start: start, pad: 2, guardValue: guardValue) {
            (be, y) throws(SheafError) in
            let w: WeightStorage
            if bits != nil {
                let buffer = try withBytes(of: codes) { (raw) throws(SheafError) in try be.uploadBytes(raw, as: .uint8) }
                w = .quantized(
                    codes: try MatrixView(buffer, rows: m, cols: rowBytes), minima: try input(be, minima, strided: true),
                    steps: try input(be, steps, strided: true), bits: b, group: g)
            } else {
                let buffer = try withBytes(of: halves) { (raw) throws(SheafError) in try be.uploadBytes(raw, as: scalar ?? .float16) }
                w = .half(try MatrixView(buffer, rows: n, cols: m, rowStride: stride, offset: offset))
            }
            try be.gemvStored(try input(be, x, strided: true), w, into: y, accumulate: accumulate)
        }
        let form = bits.map { "\($0)-bit group \(g)" } ?? "\(scalar ?? .float16)"
        return result("gemvStored", backend, "\(form) (\(n), \(m))\(accumulate ? " accumulate" : "")", error, productTolerance(k: n + 2), f)
    }

    /// Random labels in 0..<k (some columns never used, some used many times), strided operands.
    public static func gatherColumns(_ backend: any Backend, _ reference: any Backend, rows: Int, k: Int, n: Int, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        let src = Matrix<Float>.random(rows: rows, cols: k, seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        let labels = (0..<n).map { _ in Int32(rng.next() % UInt64(k)) }
        let (error, f) = try compareOutputs(backend, reference, start: Matrix<Float>.zeros(rows: rows, cols: n), pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.gatherColumns(input(be, src, strided: true), labels: be.upload(labels), into: out)
        }
        // A copy: exact.
        return result("gatherColumns", backend, "rows \(rows) k \(k) n \(n)", error, 0, f)
    }

    /// Random groups of the n columns (some empty), listed in shuffled order, strided operands.
    public static func sumColumnGroups(_ backend: any Backend, _ reference: any Backend, rows: Int, n: Int, k: Int, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        let src = Matrix<Float>.random(rows: rows, cols: n, seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        let labels = (0..<n).map { _ in Int(rng.next() % UInt64(k)) }
        let members = (0..<n).sorted { (labels[$0], $0 * 7919 % n) < (labels[$1], $1 * 7919 % n) }.map { Int32($0) }
        var starts = [Int32](repeating: 0, count: k + 1)
        for l in labels { starts[l + 1] += 1 }
        for c in 0..<k { starts[c + 1] += starts[c] }
        let largest = (0..<k).map { Int(starts[$0 + 1] - starts[$0]) }.max() ?? 0
        let (error, f) = try compareOutputs(backend, reference, start: Matrix<Float>.zeros(rows: rows, cols: k), pad: 2, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.sumColumnGroups(input(be, src, strided: true), members: be.upload(members), starts: be.upload(starts), into: out)
        }
        // A Float32 sum of at most `largest` terms against the reference's Float64 sum.
        return result("sumColumnGroups", backend, "rows \(rows) n \(n) k \(k)", error, productTolerance(k: largest), f)
    }

    /// Logits scaled to ±20 so the softmax is peaked, as a trained model's is.
    public static func crossEntropy(_ backend: any Backend, _ reference: any Backend, rows: Int, vocabulary: Int, seed: UInt64 = 1)
        throws(SheafError) -> ParityResult
    {
        var logits = Matrix<Float>.random(rows: rows, cols: vocabulary, seed: seed)
        for i in 0..<logits.count { logits.values[i] *= 20 }
        var rng = SplitMix64(seed: seed &+ 1)
        let targets = (0..<rows).map { _ in Int32(rng.next() % UInt64(vocabulary)) }
        var got: [[Float]] = []
        for be in [backend, reference] {
            let nll = try be.makeBuffer(.float32, count: rows)
            try be.crossEntropy(logits: input(be, logits, strided: true), targets: be.upload(targets), into: nll)
            try be.synchronize()
            got.append(try be.download(nll))
        }
        let (error, f) = compare(got[0], got[1])
        return result(
            "crossEntropy", backend, "(\(rows), \(vocabulary))", error,
            crossEntropyTolerance(logits, targets: targets, nll: got[1]), f)
    }

    /// Reference logits as in `crossEntropy`; the others are them plus `perturbation` × a second
    /// uniform draw in ±1 (a compressed model's logits against the dense ones; 0: identical rows,
    /// whose divergence is 0 up to rounding).
    public static func klDivergence(
        _ backend: any Backend, _ reference: any Backend, rows: Int, vocabulary: Int, perturbation: Float = 0.5, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        var a = Matrix<Float>.random(rows: rows, cols: vocabulary, seed: seed)
        for i in 0..<a.count { a.values[i] *= 20 }
        var b = Matrix<Float>.random(rows: rows, cols: vocabulary, seed: seed &+ 7)
        for i in 0..<b.count { b.values[i] = a.values[i] + perturbation * b.values[i] }
        var got: [[Float]] = []
        for be in [backend, reference] {
            let kl = try be.makeBuffer(.float32, count: rows)
            try be.klDivergence(reference: input(be, a, strided: true), logits: input(be, b, strided: true), into: kl)
            try be.synchronize()
            got.append(try be.download(kl))
        }
        if let negative = got[0].firstIndex(where: { $0 < 0 }) {
            return ParityResult(
                op: "klDivergence", backend: backend.kind.rawValue, shape: "(\(rows), \(vocabulary))", error: .infinity, tolerance: 0,
                failure: "negative divergence \(got[0][negative]) in row \(negative)")
        }
        let (error, f) = compare(got[0], got[1])
        return result(
            "klDivergence", backend, "(\(rows), \(vocabulary)) ± \(perturbation)", error, klDivergenceTolerance(a, b, kl: got[1]), f)
    }

    /// One case of every op at moderate, tile-unfriendly sizes: what `sheaf doctor` runs.
    public static func quickSuite(_ backend: any Backend, _ reference: any Backend) -> [ParityResult] {
        typealias Case = (String, () throws(SheafError) -> ParityResult)
        let cases: [Case] = [
            ("gemm", { () throws(SheafError) in
                try gemm(backend, reference, m: 67, n: 45, k: 130, transposeA: false, transposeB: false, alpha: 0.5, beta: 2) }),
            ("gemm", { () throws(SheafError) in
                try gemm(backend, reference, m: 33, n: 71, k: 257, transposeA: true, transposeB: true, strided: true) }),
            ("gram", { () throws(SheafError) in try gram(backend, reference, rows: 300, d: 75, strided: true) }),
            ("cholesky", { () throws(SheafError) in try cholesky(backend, reference, n: 40, indefinite: false) }),
            ("cholesky", { () throws(SheafError) in try cholesky(backend, reference, n: 40, indefinite: true) }),
            ("multiplyLower", { () throws(SheafError) in try multiplyLower(backend, reference, m: 50, n: 37, strided: true) }),
            ("solveLowerRight", { () throws(SheafError) in try solveLower(backend, reference, m: 50, n: 37, strided: true) }),
            ("kmeansDistances", { () throws(SheafError) in try kmeansDistances(backend, reference, m: 100, k: 19, d: 70) }),
            ("kmeansAssign", { () throws(SheafError) in try kmeansAssign(backend, reference, m: 100, k: 19) }),
            ("kmeansAccumulate", { () throws(SheafError) in try kmeansAccumulate(backend, reference, m: 100, k: 19, d: 70) }),
            ("rmsNorm", { () throws(SheafError) in try rmsNorm(backend, reference, rows: 33, d: 576, strided: true) }),
            ("rope", { () throws(SheafError) in try rope(backend, reference, tokens: 40, heads: 3, headDim: 64, offset: 7) }),
            ("causalAttention", { () throws(SheafError) in
                try attention(backend, reference, queries: 37, keys: 45, heads: 6, kvHeads: 2, headDim: 16) }),
            ("siluMultiply", { () throws(SheafError) in try siluMultiply(backend, reference, rows: 17, cols: 100) }),
            ("add", { () throws(SheafError) in try add(backend, reference, rows: 17, cols: 100) }),
            ("gatherColumns", { () throws(SheafError) in try gatherColumns(backend, reference, rows: 17, k: 19, n: 100) }),
            ("convertToFloat32", { () throws(SheafError) in
                try convertToFloat32(backend, reference, rows: 17, cols: 100, scalar: .float16) }),
            ("convertToFloat32", { () throws(SheafError) in
                try convertToFloat32(backend, reference, rows: 17, cols: 100, scalar: .bfloat16) }),
            ("dequantizeRows", { () throws(SheafError) in
                try dequantizeRows(backend, reference, rows: 17, n: 100, bits: 4, group: 32, transposed: true) }),
            ("dequantizeRows", { () throws(SheafError) in
                try dequantizeRows(backend, reference, rows: 17, n: 100, bits: 8, group: 64, transposed: false) }),
            ("dequantizeRows", { () throws(SheafError) in
                try dequantizeRows(backend, reference, rows: 9, n: 77, bits: 3, group: 10, transposed: true) }),
            ("gemvStored", { () throws(SheafError) in try gemvStored(backend, reference, n: 257, m: 33, scalar: .float16, accumulate: false) }),
            ("gemvStored", { () throws(SheafError) in try gemvStored(backend, reference, n: 7, m: 1030, scalar: .bfloat16, accumulate: true) }),
            ("gemvStored", { () throws(SheafError) in try gemvStored(backend, reference, n: 257, m: 7, bits: 4, group: 32, accumulate: true) }),
            ("gemvStored", { () throws(SheafError) in try gemvStored(backend, reference, n: 33, m: 9, bits: 8, group: 64, accumulate: false) }),
            ("gemvStored", { () throws(SheafError) in try gemvStored(backend, reference, n: 1, m: 5, bits: 3, group: 10, accumulate: false) }),
            ("sumColumnGroups", { () throws(SheafError) in try sumColumnGroups(backend, reference, rows: 17, n: 100, k: 19) }),
            ("crossEntropy", { () throws(SheafError) in try crossEntropy(backend, reference, rows: 9, vocabulary: 1000) }),
            ("klDivergence", { () throws(SheafError) in try klDivergence(backend, reference, rows: 9, vocabulary: 1000) }),
        ]
        return cases.map { (op, run) in
            do throws(SheafError) { return try run() } catch {
                return ParityResult(
                    op: op, backend: backend.kind.rawValue, shape: "", error: .nan, tolerance: 0,
                    failure: error.description)
            }
        }
    }
}
