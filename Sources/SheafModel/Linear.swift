import SheafBackend
import SheafCore

/// y = x·Wᵀ (+ b) for a batch of rows x (rows, inputSize) → y (rows, outputSize), in whatever
/// factored form the weights take. The forward pass knows only this protocol; the compression
/// methods add low-rank, shared-basis, clustered and head-shared variants.
public protocol LinearLayer: AnyObject, Sendable {
    var inputSize: Int { get }
    var outputSize: Int { get }
    /// Stored parameters (weights and bias).
    var parameterCount: Int { get }
    /// Writes x·Wᵀ (+ b) into y.
    func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError)
}

/// A dense weight W (outputSize, inputSize), kept on the backend as Wᵀ (inputSize,
/// outputSize) so the product is a plain x·Wᵀ GEMM with no transposed operand, which every
/// backend (and the CPU-driver OpenCL kernels) runs fastest.
public final class DenseLinear: LinearLayer, @unchecked Sendable {
    public let inputSize: Int
    public let outputSize: Int
    let backend: any Backend
    /// Wᵀ: (inputSize, outputSize).
    let weightT: MatrixView
    /// (1, outputSize), or nil.
    let bias: MatrixView?

    /// `weight`: W as (outputSize, inputSize) row-major values.
    public init(weight: [Float], outputSize: Int, inputSize: Int, bias: [Float]? = nil, on backend: any Backend, name: String)
        throws(SheafError)
    {
        guard weight.count == outputSize * inputSize, bias == nil || bias!.count == outputSize else {
            throw .shapeMismatch(op: "DenseLinear", detail: "\(name): \(weight.count) weights for (\(outputSize), \(inputSize))")
        }
        var transposed = [Float](repeating: 0, count: weight.count)
        weight.withUnsafeBufferPointer { w in
            transposed.withUnsafeMutableBufferPointer { t in
                for o in 0..<outputSize { for i in 0..<inputSize { t[i * outputSize + o] = w[o * inputSize + i] } }
            }
        }
        self.inputSize = inputSize
        self.outputSize = outputSize
        self.backend = backend
        weightT = try MatrixView(backend.upload(transposed, label: name), rows: inputSize, cols: outputSize)
        self.bias = try bias.map { (b) throws(SheafError) in try MatrixView(backend.upload(b, label: name + " bias"), rows: 1, cols: outputSize) }
    }

    public var parameterCount: Int { inputSize * outputSize + (bias == nil ? 0 : outputSize) }

    public func forward(_ x: MatrixView, into y: MatrixView) throws(SheafError) {
        try backend.gemm(x, transposeA: false, weightT, transposeB: false, into: y, alpha: 1, beta: 0)
        if let bias { try backend.add(try MatrixView(broadcasting: bias, rows: x.rows), into: y) }
    }
}
