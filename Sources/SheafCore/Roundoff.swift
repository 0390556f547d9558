/// Rounding-error bounds from which every floating-point tolerance (parity checks, tests) is
/// derived rather than tuned on one machine (Higham, *Accuracy and Stability of Numerical
/// Algorithms*, 2nd ed., §3.1).
///
/// A sum or dot product of n terms computed in any order, with or without fused multiply-add,
/// errs by at most γ_n·Σ|aᵢbᵢ|, γ_n = n·u/(1 − n·u): the bound holds for every blocking and
/// summation order a BLAS or a kernel may choose (OpenBLAS's Haswell, SkylakeX or Cooperlake
/// kernels, PoCL's vectoriser, a GPU's tree reduction). For inputs that are independent and zero-
/// mean, as the seeded test data are, ‖|A||B|‖²/‖AB‖² ≤ n, so the normalised MSE
/// Σ(got − exact)²/Σexact² of such outputs is at most γ_n²·n. Comparing two computations that
/// each meet the bound doubles the error, four times the squared bound.
public enum Roundoff {
    /// Unit roundoff of Float32 (2⁻²⁴) and Float64 (2⁻⁵³).
    public static let float32: Double = 0x1p-24
    public static let float64: Double = 0x1p-53

    /// γ_n = n·u / (1 − n·u).
    public static func gamma(_ n: Int, unit u: Double) -> Double {
        let nu = Double(max(n, 1)) * u
        return nu < 1 ? nu / (1 - nu) : .infinity
    }

    /// The worst-case normalised MSE of one computation whose every output is reached through at
    /// most `terms` roundings of unit `u`, on independent zero-mean data: γ_terms² · terms.
    public static func nmse(terms: Int, unit u: Double = float32) -> Double {
        let g = gamma(terms, unit: u)
        return g * g * Double(max(terms, 1))
    }

    /// Two computations that each meet `nmse(terms:unit:)`, compared with each other:
    /// ‖a − b‖ ≤ ‖a − x‖ + ‖x − b‖, so the squared bound is four times one's.
    public static func nmseBetween(terms: Int, unit u: Double = float32) -> Double {
        4 * nmse(terms: terms, unit: u)
    }

    /// A chain of steps (a forward pass: norms, products, softmax) whose relative errors add to
    /// first order, each carried on with unit amplification: √nMSE ≤ Σᵢ γ_{nᵢ}·√nᵢ over the
    /// steps' term counts nᵢ (κ ≤ nᵢ per step, as in `nmse`). Returned squared.
    public static func chainNMSE(_ terms: [Int], unit u: Double = float32) -> Double {
        let root = terms.reduce(0.0) { $0 + gamma($1, unit: u) * Double(max($1, 1)).squareRoot() }
        return root * root
    }

    /// The typical relative error of the same chain when roundings behave as independent random
    /// variables (Higham §3.6: a sum of n terms errs by ≈ √n·u), the variances adding: u·√Σnᵢ.
    /// Only for what the worst case cannot bound usefully (a 30-layer model); callers add a
    /// margin in standard deviations.
    public static func statisticalRelative(_ terms: [Int], unit u: Double = float32) -> Double {
        u * Double(terms.reduce(0) { $0 + max($1, 1) }).squareRoot()
    }
}
