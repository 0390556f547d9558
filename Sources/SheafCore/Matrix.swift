/// A dense row-major matrix on the host: element (r, c) is `values[r * cols + c]`.
public struct Matrix<Element: Sendable>: Sendable {
    public let rows: Int
    public let cols: Int
    public var values: [Element]
    // Members are @inlinable so loops in other modules specialise for Float/Double instead of
    // going through generic metadata on every element access.

    public init(rows: Int, cols: Int, values: [Element]) throws(SheafError) {
        guard rows >= 0, cols >= 0, values.count == rows * cols else {
            throw .shapeMismatch(
                op: "Matrix.init", detail: "\(values.count) values for shape (\(rows), \(cols))")
        }
        self.rows = rows
        self.cols = cols
        self.values = values
    }

    @inlinable public init(rows: Int, cols: Int, repeating value: Element) {
        self.rows = max(rows, 0)
        self.cols = max(cols, 0)
        self.values = Array(repeating: value, count: self.rows * self.cols)
    }

    @inlinable public var count: Int { rows * cols }
    public var shape: String { "(\(rows), \(cols))" }

    @inlinable public subscript(row: Int, col: Int) -> Element {
        get { values[row * cols + col] }
        set { values[row * cols + col] = newValue }
    }
}

extension Matrix where Element: BinaryFloatingPoint {
    @inlinable public static func zeros(rows: Int, cols: Int) -> Matrix { Matrix(rows: rows, cols: cols, repeating: 0) }

    @inlinable public static func identity(_ n: Int) -> Matrix {
        var m = zeros(rows: n, cols: n)
        for i in 0..<n { m[i, i] = 1 }
        return m
    }

    /// The transpose, (cols, rows). (@inlinable, like every per-element loop here: unspecialised
    /// generic code costs ~100 ns per element.)
    @inlinable public var transposed: Matrix {
        var t = Matrix.zeros(rows: cols, cols: rows)
        for r in 0..<rows { for c in 0..<cols { t.values[c * rows + r] = values[r * cols + c] } }
        return t
    }

    /// Whether every element is finite; the first non-finite index otherwise.
    @inlinable public var firstNonFinite: (row: Int, col: Int)? {
        guard let i = values.firstIndex(where: { !$0.isFinite }) else { return nil }
        return (i / max(cols, 1), i % max(cols, 1))
    }
}

extension Matrix where Element == Float {
    /// Uniform values in [-1, 1) from a seeded generator: reproducible test and benchmark data.
    public static func random(rows: Int, cols: Int, seed: UInt64) -> Matrix {
        var rng = SplitMix64(seed: seed)
        var m = zeros(rows: rows, cols: cols)
        for i in 0..<m.count { m.values[i] = rng.nextSignedUnitFloat() }
        return m
    }

    public var asDouble: Matrix<Double> {
        Matrix<Double>(unchecked: rows, cols, values.map(Double.init))
    }
}

extension Matrix where Element == Double {
    public var asFloat: Matrix<Float> {
        Matrix<Float>(unchecked: rows, cols, values.map(Float.init))
    }
}

extension Matrix {
    /// For callers that built `values` with exactly rows * cols elements.
    @inlinable package init(unchecked rows: Int, _ cols: Int, _ values: [Element]) {
        self.rows = rows
        self.cols = cols
        self.values = values
    }
}
