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
    /// Tolerances on the normalised MSE. Float32 products of K terms carry a relative error
    /// near 1e-7·√K, a normalised MSE near 1e-14·K: 1e-9 leaves room for K up to ~10⁴ and
    /// still catches one dropped term in a few thousand.
    public static let float32ProductTolerance = 1e-9
    /// Float64 arithmetic on float32 inputs (whitening products, solves, cluster sums).
    public static let float64Tolerance = 1e-18
    /// Element-wise float32 ops against Float64: one rounding per element, a normalised MSE
    /// near 1e-15.
    public static let elementwiseTolerance = 1e-12
    /// ‖A − LLᵀ‖_F / ‖A‖_F for a Cholesky factor.
    public static let factorTolerance = 1e-12

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
        return result("gemm", backend, shape, error, float32ProductTolerance, f)
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
            "gram", backend, "\(chunks)x(\(rows), \(d))\(strided ? " strided" : "")", error, float32ProductTolerance, f)
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
        var failure = lower ? "" : "factor is not lower-triangular"
        if f.usedFallback != indefinite || r.usedFallback != indefinite {
            failure = "fallback used: \(f.usedFallback), reference: \(r.usedFallback), expected \(indefinite)"
        } else if abs(f.shift - r.shift) > 1e-8 * max(1, abs(r.shift)) {
            failure = "shift \(f.shift) vs reference \(r.shift)"
        }
        return result(
            "cholesky", backend, "(\(n), \(n))\(indefinite ? " indefinite" : "")", residual, factorTolerance, failure)
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
            "multiplyLower", backend, "(\(m), \(n))\(strided ? " strided" : "")", error, float64Tolerance, f)
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
            "solveLowerRight", backend, "(\(m), \(n))\(strided ? " strided" : "")", error, float64Tolerance * 1e4, f)
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
            float32ProductTolerance, f)
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
            "kmeansAccumulate", backend, "m \(m) k \(k) d \(d)\(strided ? " strided" : "")", error, float64Tolerance, f)
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
        return result("rmsNorm", backend, "(\(rows), \(d))\(strided ? " strided" : "")", error, float32ProductTolerance, f)
    }

    public static func rope(
        _ backend: any Backend, _ reference: any Backend, tokens: Int, heads: Int, headDim: Int, offset: Int, seed: UInt64 = 1
    ) throws(SheafError) -> ParityResult {
        let x = Matrix<Float>.random(rows: tokens, cols: heads * headDim, seed: seed)
        let (error, f) = try compareOutputs(backend, reference, start: x, pad: 3, guardValue: guardValue) {
            (be, out) throws(SheafError) in
            try be.rope(out, headDim: headDim, positionOffset: offset, theta: 10_000)
        }
        return result("rope", backend, "\(tokens) tokens \(heads)x\(headDim) from \(offset)", error, float32ProductTolerance, f)
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
            float32ProductTolerance, f)
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
        return result("siluMultiply", backend, "(\(rows), \(cols))", error, elementwiseTolerance, f)
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
        return result("add", backend, "(\(rows), \(cols))", error, elementwiseTolerance, f)
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
        return result("crossEntropy", backend, "(\(rows), \(vocabulary))", error, float32ProductTolerance, f)
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
            ("crossEntropy", { () throws(SheafError) in try crossEntropy(backend, reference, rows: 9, vocabulary: 1000) }),
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
