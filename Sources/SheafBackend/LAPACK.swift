import COpenBLAS
import SheafCore

/// Float64 factorisations on the host through OpenBLAS's Fortran LAPACK. Matrices are
/// row-major; LAPACK is column-major, so a symmetric input is passed as is and `uplo` flips:
/// the column-major upper factor U (A = UᵀU) is, read row-major, the lower factor L (A = LLᵀ).
public enum LAPACK {
    /// Lower Cholesky factor with the "add (−λmin + epsilon)·I and retry" fallback.
    public static func cholesky(_ a: Matrix<Double>, epsilon: Double) throws(SheafError) -> CholeskyFactor {
        try SymmetricInput.validate(a, op: "cholesky")
        if let lower = try potrf(a) { return CholeskyFactor(lower: lower, shift: 0) }
        let lambdaMin = try symmetricEigenvalues(a, validated: true)[0]
        let shift = -lambdaMin + epsilon
        var shifted = a
        for i in 0..<a.rows { shifted[i, i] += shift }
        guard let lower = try potrf(shifted) else {
            throw .notPositiveDefinite(
                op: "cholesky",
                detail: "\(a.shape) still fails after adding \(shift)·I (λmin \(lambdaMin), epsilon \(epsilon))")
        }
        return CholeskyFactor(lower: lower, shift: shift)
    }

    /// Eigenvalues of a symmetric matrix, ascending (dsyevd, no vectors).
    public static func symmetricEigenvalues(_ a: Matrix<Double>) throws(SheafError) -> [Double] {
        try symmetricEigenvalues(a, validated: false)
    }

    static func symmetricEigenvalues(_ a: Matrix<Double>, validated: Bool) throws(SheafError) -> [Double] {
        if !validated { try SymmetricInput.validate(a, op: "symmetricEigenvalues") }
        return try syevd(a, vectors: false).values
    }

    /// dsyevd with its workspace query: eigenvalues ascending and, with `vectors`, LAPACK's
    /// column-major eigenvector matrix (row i read row-major is the eigenvector of value i).
    private static func syevd(_ a: Matrix<Double>, vectors: Bool) throws(SheafError) -> (values: [Double], z: [Double]) {
        let jobz = vectors ? "V" : "N"
        var n = Int32(a.rows), lda = n, info: Int32 = 0
        var z = a.values
        var w = [Double](repeating: 0, count: a.rows)
        var lwork: Int32 = -1, liwork: Int32 = -1, workSize = 0.0, iworkSize: Int32 = 0
        dsyevd_(jobz, "U", &n, &z, &lda, &w, &workSize, &lwork, &iworkSize, &liwork, &info, 1, 1)
        lwork = Int32(workSize)
        liwork = max(iworkSize, 1)
        var scratch = [Double](repeating: 0, count: Int(max(lwork, 1)))
        var iscratch = [Int32](repeating: 0, count: Int(liwork))
        dsyevd_(jobz, "U", &n, &z, &lda, &w, &scratch, &lwork, &iscratch, &liwork, &info, 1, 1)
        guard info == 0 else { throw .lapack(routine: "dsyevd", info: info, detail: "eigen\(vectors ? "vectors" : "values") of \(a.shape)") }
        return (w, z)
    }

    /// The lower factor, or nil when the matrix is not positive definite (dpotrf info > 0).
    private static func potrf(_ a: Matrix<Double>) throws(SheafError) -> Matrix<Double>? {
        var n = Int32(a.rows), lda = n, info: Int32 = 0
        var l = a
        dpotrf_("U", &n, &l.values, &lda, &info, 1)
        if info > 0 { return nil }
        guard info == 0 else { throw .lapack(routine: "dpotrf", info: info, detail: "Cholesky of \(a.shape)") }
        for i in 0..<a.rows { for j in (i + 1)..<a.cols { l[i, j] = 0 } }
        return l
    }

    /// Thin SVD of a row-major (m, n) matrix: a = u · diag(s) · vt with u (m, p), s descending
    /// (p), vt (p, n), p = min(m, n) (dgesdd). LAPACK sees the row-major matrix as its column-
    /// major transpose aᵀ = U'·S·V'ᵀ, so a = V'·S·U'ᵀ: LAPACK's column-major VT' read row-major is
    /// our u, and its column-major U' read row-major is our vt. No copies.
    public static func svd(_ a: Matrix<Double>) throws(SheafError) -> (u: Matrix<Double>, s: [Double], vt: Matrix<Double>) {
        if let bad = a.firstNonFinite { throw .nonFinite(op: "svd", what: "input \(a.shape) at \(bad)") }
        let (m, n) = (a.rows, a.cols), p = min(m, n)
        guard p > 0 else { throw .invalidArgument(op: "svd", detail: "empty matrix \(a.shape)") }
        var work = a.values
        var s = [Double](repeating: 0, count: p)
        var u = [Double](repeating: 0, count: m * p), vt = [Double](repeating: 0, count: p * n)
        // Column-major view: (n, m) with leading dimension n; its U' is (n, p), its VT' is (p, m).
        var rowsCM = Int32(n), colsCM = Int32(m), lda = Int32(n), ldu = Int32(n), ldvt = Int32(p), info: Int32 = 0
        var iwork = [Int32](repeating: 0, count: 8 * p)
        var lwork: Int32 = -1, size = 0.0
        dgesdd_("S", &rowsCM, &colsCM, &work, &lda, &s, &vt, &ldu, &u, &ldvt, &size, &lwork, &iwork, &info, 1)
        lwork = Int32(min(size, Double(Int32.max)))
        var scratch = [Double](repeating: 0, count: Int(max(lwork, 1)))
        dgesdd_("S", &rowsCM, &colsCM, &work, &lda, &s, &vt, &ldu, &u, &ldvt, &scratch, &lwork, &iwork, &info, 1)
        guard info == 0 else { throw .lapack(routine: "dgesdd", info: info, detail: "SVD of \(a.shape)") }
        return (Matrix(unchecked: m, p, u), s, Matrix(unchecked: p, n, vt))
    }

    /// x with a·x = b for symmetric positive-definite a (n, n) and b (n, r), by Cholesky (dposv).
    /// nil when a is not positive definite.
    public static func solvePositiveDefinite(_ a: Matrix<Double>, _ b: Matrix<Double>) throws(SheafError) -> Matrix<Double>? {
        guard a.rows == a.cols, b.rows == a.rows else {
            throw .shapeMismatch(op: "solvePositiveDefinite", detail: "a \(a.shape), b \(b.shape)")
        }
        // a is symmetric, so its row-major values serve as is; b and x are transposed into and
        // out of LAPACK's column-major layout.
        var n = Int32(a.rows), nrhs = Int32(b.cols), lda = n, ldb = n, info: Int32 = 0
        var factor = a.values
        var rhs = b.transposed.values  // column-major (n, r)
        dposv_("U", &n, &nrhs, &factor, &lda, &rhs, &ldb, &info, 1)
        if info > 0 { return nil }
        guard info == 0 else { throw .lapack(routine: "dposv", info: info, detail: "solve with \(a.shape)") }
        return Matrix(unchecked: b.cols, b.rows, rhs).transposed
    }

    /// x with (a + shift·I)·x = b for symmetric a (n, n) and b (n, r): shift 0 when a is positive
    /// definite, else the whitening's fallback (`cholesky`): −λmin + epsilon, tried once.
    public static func solvePositiveDefinite(
        _ a: Matrix<Double>, _ b: Matrix<Double>, epsilon: Double
    ) throws(SheafError) -> (x: Matrix<Double>, shift: Double) {
        try SymmetricInput.validate(a, op: "solvePositiveDefinite")
        if let x = try solvePositiveDefinite(a, b) { return (x, 0) }
        let shift = -(try symmetricEigenvalues(a, validated: true)[0]) + epsilon
        var shifted = a
        for i in 0..<a.rows { shifted[i, i] += shift }
        guard let x = try solvePositiveDefinite(shifted, b) else {
            throw .notPositiveDefinite(op: "solvePositiveDefinite", detail: "\(a.shape) still fails after adding \(shift)·I (epsilon \(epsilon))")
        }
        return (x, shift)
    }

    /// op(a) · op(b) in Float64 on the host (dgemm), for the small products around the
    /// factorisations (reports, refits).
    public static func multiply(
        _ a: Matrix<Double>, transposeA: Bool = false, _ b: Matrix<Double>, transposeB: Bool = false
    ) throws(SheafError) -> Matrix<Double> {
        let (m, ka) = transposeA ? (a.cols, a.rows) : (a.rows, a.cols)
        let (kb, n) = transposeB ? (b.cols, b.rows) : (b.rows, b.cols)
        guard ka == kb else {
            throw .shapeMismatch(op: "multiply", detail: "\(a.shape)\(transposeA ? "ᵀ" : "") · \(b.shape)\(transposeB ? "ᵀ" : "")")
        }
        var c = [Double](repeating: 0, count: m * n)
        if m > 0, n > 0, ka > 0 {
            cblas_dgemm(
                CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(ka), 1, a.values, Int32(max(a.cols, 1)), b.values, Int32(max(b.cols, 1)), 0, &c, Int32(max(n, 1)))
        }
        return Matrix(unchecked: m, n, c)
    }

    /// Eigenvalues (ascending) and eigenvectors of a symmetric matrix (dsyevd): row i of
    /// `vectors` is the unit eigenvector of `values[i]` (LAPACK's column-major Z read row-major).
    public static func symmetricEigen(_ a: Matrix<Double>) throws(SheafError) -> (values: [Double], vectors: Matrix<Double>) {
        try SymmetricInput.validate(a, op: "symmetricEigen")
        let (w, z) = try syevd(a, vectors: true)
        return (w, Matrix(unchecked: a.rows, a.cols, z))
    }

    /// The thin SVD of `svd`, computed from the eigendecomposition of the smaller Gram (aᵀa or
    /// a·aᵀ): for the tall, thin stacks of Basis Sharing (e.g. 3072 × 576) about 5× faster than
    /// dgesdd on two cores. Squaring costs relative accuracy only for singular values below
    /// ≈ √ε·σ_max, far beyond any rank a compression keeps; the factors still multiply back to
    /// `a` (u·diag(s)·vt = a·v·vᵀ or u·uᵀ·a with orthonormal eigenvectors). Singular values that
    /// round to zero get zero vectors on the other side.
    public static func svdThroughGram(_ a: Matrix<Double>) throws(SheafError) -> (u: Matrix<Double>, s: [Double], vt: Matrix<Double>) {
        if let bad = a.firstNonFinite { throw .nonFinite(op: "svd", what: "input \(a.shape) at \(bad)") }
        let (m, n) = (a.rows, a.cols), p = min(m, n)
        guard p > 0 else { throw .invalidArgument(op: "svd", detail: "empty matrix \(a.shape)") }
        let tall = m >= n
        // The Gram on the short side, made exactly symmetric (dgemm's two triangles can differ in the last bit).
        var gram = tall ? try multiply(a, transposeA: true, a) : try multiply(a, a, transposeB: true)
        for i in 0..<p { for j in (i + 1)..<p { let v = 0.5 * (gram[i, j] + gram[j, i]); gram[i, j] = v; gram[j, i] = v } }
        let (values, vectors) = try symmetricEigen(gram)
        let s = (0..<p).map { max(values[p - 1 - $0], 0).squareRoot() }  // round-off can make λ slightly negative
        var side = Matrix<Double>.zeros(rows: p, cols: p)  // descending eigenvectors as rows
        for j in 0..<p { for c in 0..<p { side[j, c] = vectors[p - 1 - j, c] } }
        let cutoff = (s.first ?? 0) * Double(max(m, n)) * Double.ulpOfOne
        if tall {
            // v = sideᵀ, u = a·v·Σ⁻¹.
            var u = try multiply(a, side, transposeB: true)
            for r in 0..<m { for j in 0..<p { u[r, j] = s[j] > cutoff ? u[r, j] / s[j] : 0 } }
            return (u, s, side)
        } else {
            // u = sideᵀ, vt = Σ⁻¹·uᵀ·a.
            var vt = try multiply(side, a)
            for j in 0..<p { for c in 0..<n { vt[j, c] = s[j] > cutoff ? vt[j, c] / s[j] : 0 } }
            return (side.transposed, s, vt)
        }
    }
}
