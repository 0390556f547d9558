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
        var n = Int32(a.rows), lda = n, info: Int32 = 0
        var work = a.values
        var w = [Double](repeating: 0, count: a.rows)
        var lwork: Int32 = -1, liwork: Int32 = -1
        var workSize = 0.0
        var iworkSize: Int32 = 0
        dsyevd_("N", "U", &n, &work, &lda, &w, &workSize, &lwork, &iworkSize, &liwork, &info, 1, 1)
        lwork = Int32(workSize)
        liwork = max(iworkSize, 1)
        var scratch = [Double](repeating: 0, count: Int(max(lwork, 1)))
        var iscratch = [Int32](repeating: 0, count: Int(liwork))
        dsyevd_("N", "U", &n, &work, &lda, &w, &scratch, &lwork, &iscratch, &liwork, &info, 1, 1)
        guard info == 0 else { throw .lapack(routine: "dsyevd", info: info, detail: "eigenvalues of \(a.shape)") }
        return w
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
}
