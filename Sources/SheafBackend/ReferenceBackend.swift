import SheafCore

/// Plain Swift in Float64: the oracle the parity tests compare `cpu` and `opencl` against.
/// Every op is the textbook loop; none is fast. Float32 outputs are rounded once at the end.
public final class ReferenceBackend: HostMemoryBackend, @unchecked Sendable {
    public let kind = BackendKind.reference
    public let deviceName = "plain Swift, Float64"

    public init() {}

    public func gemm(
        _ a: MatrixView, transposeA: Bool, _ b: MatrixView, transposeB: Bool, into c: MatrixView,
        alpha: Float, beta: Float
    ) throws(SheafError) {
        try Check.owner(self, [a, b, c], op: "gemm")
        let (m, n, k) = try Check.gemm(a, transposeA, b, transposeB, c)
        let pa = floats(a), pb = floats(b), pc = floats(c)
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0
                for p in 0..<k {
                    let av = transposeA ? pa[p * a.rowStride + i] : pa[i * a.rowStride + p]
                    let bv = transposeB ? pb[j * b.rowStride + p] : pb[p * b.rowStride + j]
                    sum += Double(av) * Double(bv)
                }
                let old = beta == 0 ? 0 : Double(beta) * Double(pc[i * c.rowStride + j])
                pc[i * c.rowStride + j] = Float(Double(alpha) * sum + old)
            }
        }
    }

    public func accumulateGram(_ x: MatrixView, into gram: MatrixView) throws(SheafError) {
        try Check.owner(self, [x, gram], op: "accumulateGram")
        try Check.gram(x, gram)
        let px = floats(x), g = doubles(gram), d = x.cols
        for i in 0..<d {
            for j in 0..<d {
                var sum = 0.0
                for r in 0..<x.rows { sum += Double(px[r * x.rowStride + i]) * Double(px[r * x.rowStride + j]) }
                g[i * gram.rowStride + j] += sum
            }
        }
    }

    /// Cholesky–Banachiewicz; the fallback finds λmin with cyclic Jacobi rotations.
    public func cholesky(_ a: Matrix<Double>, epsilon: Double) throws(SheafError) -> CholeskyFactor {
        try SymmetricInput.validate(a, op: "cholesky")
        if let l = Self.choleskyLower(a) { return CholeskyFactor(lower: l, shift: 0) }
        let lambdaMin = Self.jacobiEigenvalues(a).min() ?? 0
        let shift = -lambdaMin + epsilon
        var shifted = a
        for i in 0..<a.rows { shifted[i, i] += shift }
        guard let l = Self.choleskyLower(shifted) else {
            throw .notPositiveDefinite(op: "cholesky", detail: "\(a.shape) still fails after adding \(shift)·I")
        }
        return CholeskyFactor(lower: l, shift: shift)
    }

    static func choleskyLower(_ a: Matrix<Double>) -> Matrix<Double>? {
        let n = a.rows
        var l = Matrix<Double>.zeros(rows: n, cols: n)
        for i in 0..<n {
            for j in 0...i {
                var sum = a[i, j]
                for p in 0..<j { sum -= l[i, p] * l[j, p] }
                if i == j {
                    guard sum > 0 else { return nil }
                    l[i, i] = sum.squareRoot()
                } else {
                    l[i, j] = sum / l[j, j]
                }
            }
        }
        return l
    }

    /// Eigenvalues of a symmetric matrix by cyclic Jacobi (unsorted).
    public static func jacobiEigenvalues(_ input: Matrix<Double>) -> [Double] {
        var a = input
        let n = a.rows
        var total = 0.0
        for v in a.values { total += v * v }
        for _ in 0..<100 {
            var off = 0.0
            for i in 0..<n { for j in 0..<n where i != j { off += a[i, j] * a[i, j] } }
            if off <= 1e-30 * total { break }
            for p in 0..<n {
                for q in (p + 1)..<n where a[p, q] != 0 {
                    let theta = (a[q, q] - a[p, p]) / (2 * a[p, q])
                    let t = (theta >= 0 ? 1.0 : -1.0) / (abs(theta) + (theta * theta + 1).squareRoot())
                    let c = 1 / (t * t + 1).squareRoot(), s = t * c
                    for k in 0..<n {
                        let akp = a[k, p], akq = a[k, q]
                        a[k, p] = c * akp - s * akq
                        a[k, q] = s * akp + c * akq
                    }
                    for k in 0..<n {
                        let apk = a[p, k], aqk = a[q, k]
                        a[p, k] = c * apk - s * aqk
                        a[q, k] = s * apk + c * aqk
                    }
                }
            }
        }
        return (0..<n).map { a[$0, $0] }
    }

    public func multiplyLower(_ w: MatrixView, _ lower: MatrixView, into out: MatrixView) throws(SheafError) {
        try Check.owner(self, [w, lower, out], op: "multiplyLower")
        try Check.multiplyLower(w, lower, out)
        let pw = floats(w), pl = doubles(lower), po = doubles(out), n = w.cols
        for r in 0..<w.rows {
            for j in 0..<n {
                var sum = 0.0
                for p in j..<n { sum += Double(pw[r * w.rowStride + p]) * pl[p * lower.rowStride + j] }
                po[r * out.rowStride + j] = sum
            }
        }
    }

    /// Back substitution per row: z·L = y, last column first.
    public func solveLowerRight(_ y: MatrixView, _ lower: MatrixView) throws(SheafError) {
        try Check.owner(self, [y, lower], op: "solveLowerRight")
        try Check.solveLower(y, lower)
        let py = doubles(y), pl = doubles(lower), n = y.cols
        for i in 0..<n where pl[i * lower.rowStride + i] == 0 {
            throw .invalidArgument(op: "solveLowerRight", detail: "lower[\(i), \(i)] = 0")
        }
        for r in 0..<y.rows {
            let row = py + r * y.rowStride
            for j in stride(from: n - 1, through: 0, by: -1) {
                var sum = row[j]
                for p in (j + 1)..<n { sum -= row[p] * pl[p * lower.rowStride + j] }
                row[j] = sum / pl[j * lower.rowStride + j]
            }
        }
    }

    public func kmeansDistances(points: MatrixView, centroids: MatrixView, into distances: MatrixView)
        throws(SheafError)
    {
        try Check.owner(self, [points, centroids, distances], op: "kmeansDistances")
        try Check.kmeansDistances(points, centroids, distances)
        let pp = floats(points), pc = floats(centroids), pd = floats(distances)
        for i in 0..<points.rows {
            for c in 0..<centroids.rows {
                var sum = 0.0
                for j in 0..<points.cols {
                    let diff = Double(pp[i * points.rowStride + j]) - Double(pc[c * centroids.rowStride + j])
                    sum += diff * diff
                }
                pd[i * distances.rowStride + c] = Float(sum)
            }
        }
    }

    public func kmeansAssign(distances: MatrixView, labels: DeviceBuffer, minima: DeviceBuffer) throws(SheafError) {
        try Check.owner(self, [distances], [labels, minima], op: "kmeansAssign")
        try Check.kmeansAssign(distances, labels, minima)
        let d = floats(distances), l = ints(labels)
        let mins = host(minima).assumingMemoryBound(to: Float.self)
        for i in 0..<distances.rows {
            var best = 0
            for c in 0..<distances.cols where d[i * distances.rowStride + c] < d[i * distances.rowStride + best] {
                best = c
            }
            l[i] = Int32(best)
            mins[i] = d[i * distances.rowStride + best]
        }
    }

    public func kmeansAccumulate(points: MatrixView, labels: DeviceBuffer, sums: MatrixView, counts: DeviceBuffer)
        throws(SheafError)
    {
        try Check.owner(self, [points, sums], [labels, counts], op: "kmeansAccumulate")
        try Check.kmeansAccumulate(points, labels, sums, counts)
        let l = ints(labels), n = ints(counts), s = doubles(sums), p = floats(points)
        for i in 0..<points.rows { try Check.label(l[i], at: i, k: sums.rows) }
        for c in 0..<sums.rows {
            n[c] = 0
            for j in 0..<sums.cols {
                var sum = 0.0
                for i in 0..<points.rows where Int(l[i]) == c { sum += Double(p[i * points.rowStride + j]) }
                s[c * sums.rowStride + j] = sum
            }
        }
        for i in 0..<points.rows { n[Int(l[i])] += 1 }
    }
}
