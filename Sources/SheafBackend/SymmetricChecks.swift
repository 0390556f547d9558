import SheafCore

/// Input checks for the symmetric factorisations (Cholesky, eigenvalues).
enum SymmetricInput {
    /// Square, non-empty, finite and symmetric to a relative 1e-10 (Grams accumulated by the
    /// backends are exactly symmetric; the tolerance admits matrices written out in decimal).
    static func validate(_ a: Matrix<Double>, op: String) throws(SheafError) {
        guard a.rows > 0, a.rows == a.cols else {
            throw .shapeMismatch(op: op, detail: "needs a non-empty square matrix, got \(a.shape)")
        }
        guard a.rows < 46341 else { throw .invalidArgument(op: op, detail: "order \(a.rows) exceeds 32-bit LAPACK") }
        if let (r, c) = a.firstNonFinite {
            throw .nonFinite(op: op, what: "element (\(r), \(c)) = \(a[r, c])")
        }
        let n = a.rows
        var scale = 0.0
        for v in a.values { scale = max(scale, abs(v)) }
        for i in 0..<n {
            for j in (i + 1)..<n where abs(a[i, j] - a[j, i]) > 1e-10 * scale {
                throw .notSymmetric(op: op, detail: "a[\(i), \(j)] = \(a[i, j]) but a[\(j), \(i)] = \(a[j, i]) in \(a.shape)")
            }
        }
    }
}
