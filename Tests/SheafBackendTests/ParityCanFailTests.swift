import SheafBackend
import SheafCore
import SheafTestSupport
import Testing

/// The cpu backend with one deliberate bug, to show the parity checker each kind of failure it
/// exists to catch: a wrong constant (tolerance), a write past the output (guard band), an index
/// off by one (exact comparison).
final class WrongBackend: Backend, @unchecked Sendable {
    enum Fault: String, CaseIterable, CustomTestStringConvertible, Sendable {
        /// gemm scales by α·(1 + 10⁻³): every output off by 0.1%.
        case gemmScale
        /// rope also rotates the row after the view: the guard band below the output changes.
        case ropeOverrun
        /// kmeansAssign reads the distances one column to the right: labels off by one.
        case assignOffByOne
        var testDescription: String { rawValue }
    }

    let inner = CPUBackend()
    let fault: Fault?

    init(_ fault: Fault?) { self.fault = fault }

    var kind: BackendKind { inner.kind }
    var deviceName: String { "wrong " + inner.deviceName }

    func makeBuffer(_ scalar: ScalarType, count: Int) throws(SheafError) -> DeviceBuffer { try inner.makeBuffer(scalar, count: count) }
    func uploadBytes(_ bytes: UnsafeRawBufferPointer, as scalar: ScalarType) throws(SheafError) -> DeviceBuffer {
        try inner.uploadBytes(bytes, as: scalar)
    }
    func downloadBytes(_ buffer: DeviceBuffer, into bytes: UnsafeMutableRawBufferPointer) throws(SheafError) {
        try inner.downloadBytes(buffer, into: bytes)
    }

    func gemm(_ a: MatrixView, transposeA: Bool, _ b: MatrixView, transposeB: Bool, into c: MatrixView, alpha: Float, beta: Float)
        throws(SheafError)
    {
        let scale: Float = fault == .gemmScale ? 1.001 : 1
        try inner.gemm(a, transposeA: transposeA, b, transposeB: transposeB, into: c, alpha: alpha * scale, beta: beta)
    }

    func accumulateGram(_ x: MatrixView, into gram: MatrixView) throws(SheafError) { try inner.accumulateGram(x, into: gram) }
    func cholesky(_ a: Matrix<Double>, epsilon: Double) throws(SheafError) -> CholeskyFactor { try inner.cholesky(a, epsilon: epsilon) }
    func multiplyLower(_ w: MatrixView, _ lower: MatrixView, into out: MatrixView) throws(SheafError) {
        try inner.multiplyLower(w, lower, into: out)
    }
    func solveLowerRight(_ y: MatrixView, _ lower: MatrixView) throws(SheafError) { try inner.solveLowerRight(y, lower) }
    func kmeansDistances(points: MatrixView, centroids: MatrixView, into distances: MatrixView) throws(SheafError) {
        try inner.kmeansDistances(points: points, centroids: centroids, into: distances)
    }
    func kmeansAssign(distances: MatrixView, labels: DeviceBuffer, minima: DeviceBuffer) throws(SheafError) {
        var view = distances
        if fault == .assignOffByOne {
            view = try MatrixView(
                distances.buffer, rows: distances.rows, cols: distances.cols - 1, rowStride: distances.rowStride, offset: distances.offset + 1)
        }
        try inner.kmeansAssign(distances: view, labels: labels, minima: minima)
    }
    func kmeansAccumulate(points: MatrixView, labels: DeviceBuffer, sums: MatrixView, counts: DeviceBuffer) throws(SheafError) {
        try inner.kmeansAccumulate(points: points, labels: labels, sums: sums, counts: counts)
    }

    func gatherColumns(_ src: MatrixView, labels: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try inner.gatherColumns(src, labels: labels, into: out)
    }
    func convertToFloat32(_ src: MatrixView, into out: MatrixView) throws(SheafError) {
        try inner.convertToFloat32(src, into: out)
    }
    func dequantizeRows(
        codes: MatrixView, minima: MatrixView, steps: MatrixView, bits: Int, group: Int, into out: MatrixView, transposed: Bool
    ) throws(SheafError) {
        try inner.dequantizeRows(codes: codes, minima: minima, steps: steps, bits: bits, group: group, into: out, transposed: transposed)
    }
    func gemvStored(_ x: MatrixView, _ w: WeightStorage, into y: MatrixView, accumulate: Bool) throws(SheafError) {
        try inner.gemvStored(x, w, into: y, accumulate: accumulate)
    }
    func sumColumnGroups(_ src: MatrixView, members: DeviceBuffer, starts: DeviceBuffer, into out: MatrixView) throws(SheafError) {
        try inner.sumColumnGroups(src, members: members, starts: starts, into: out)
    }

    func rmsNorm(_ x: MatrixView, weight: MatrixView, eps: Float, into out: MatrixView) throws(SheafError) {
        try inner.rmsNorm(x, weight: weight, eps: eps, into: out)
    }

    func rope(_ x: MatrixView, headDim: Int, positionOffset: Int, theta: Double) throws(SheafError) {
        var view = x
        if fault == .ropeOverrun {
            view = try MatrixView(x.buffer, rows: x.rows + 1, cols: x.cols, rowStride: x.rowStride, offset: x.offset)
        }
        try inner.rope(view, headDim: headDim, positionOffset: positionOffset, theta: theta)
    }

    func causalAttention(q: MatrixView, k: MatrixView, v: MatrixView, into out: MatrixView, heads: Int, kvHeads: Int, headDim: Int)
        throws(SheafError)
    {
        try inner.causalAttention(q: q, k: k, v: v, into: out, heads: heads, kvHeads: kvHeads, headDim: headDim)
    }
    func siluMultiply(gate: MatrixView, up: MatrixView, into out: MatrixView) throws(SheafError) {
        try inner.siluMultiply(gate: gate, up: up, into: out)
    }
    func add(_ x: MatrixView, into y: MatrixView) throws(SheafError) { try inner.add(x, into: y) }
    func crossEntropy(logits: MatrixView, targets: DeviceBuffer, into nll: DeviceBuffer) throws(SheafError) {
        try inner.crossEntropy(logits: logits, targets: targets, into: nll)
    }
    func klDivergence(reference: MatrixView, logits: MatrixView, into kl: DeviceBuffer) throws(SheafError) {
        try inner.klDivergence(reference: reference, logits: logits, into: kl)
    }
    func synchronize() throws(SheafError) { try inner.synchronize() }
}

extension BackendSuites {
    /// The parity tier can fail: each deliberate bug fails its op's check, with the failure it
    /// is, and the same checks pass on the wrapper without the bug (so the wrapper is not what fails).
    @Suite struct ParityCanFail {
        func checks(_ be: any Backend) throws -> [WrongBackend.Fault: ParityResult] {
            [
                .gemmScale: try Parity.gemm(be, Backends.reference, m: 67, n: 45, k: 130, transposeA: false, transposeB: true, strided: true),
                .ropeOverrun: try Parity.rope(be, Backends.reference, tokens: 40, heads: 3, headDim: 64, offset: 7),
                .assignOffByOne: try Parity.kmeansAssign(be, Backends.reference, m: 100, k: 19),
            ]
        }

        @Test func withoutTheBugEveryCheckPasses() throws {
            for (_, r) in try checks(WrongBackend(nil)) { expectPass(r) }
        }

        @Test(arguments: WrongBackend.Fault.allCases)
        func eachBugFailsItsCheck(_ fault: WrongBackend.Fault) throws {
            let results = try checks(WrongBackend(fault))
            let r = try #require(results[fault])
            #expect(!r.passed, "\(fault) passed: error \(r.error), tolerance \(r.tolerance)")
            switch fault {
            case .gemmScale: #expect(r.failure.contains("above tolerance"), "\(r.failure)")
            case .ropeOverrun: #expect(r.failure.contains("guard band"), "\(r.failure)")
            case .assignOffByOne: #expect(r.failure.contains("labels differ"), "\(r.failure)")
            }
            // The other ops are untouched by this bug.
            for (other, result) in results where other != fault { expectPass(result) }
        }
    }
}
