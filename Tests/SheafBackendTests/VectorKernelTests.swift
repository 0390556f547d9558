import Foundation
import SheafBackend
import SheafCPUKernels
import SheafCore
import Testing

/// SheafCPUKernels against Float64 libm, run only where the CPU can execute them (everywhere on
/// arm64; on x86-64 with AVX2 + FMA). The backend-level parity of the loops that use them is in
/// ForwardOpParity (the `cpu` and `cpuPortable` rows).
@Suite(.enabled(if: CPUFeatures.vectorKernels, "this CPU lacks AVX2 + FMA"))
struct VectorKernelTests {
    /// Relative error of e^x against Float64 exp over the range softmax, SiLU and log-sum-exp
    /// use, and the clamps at both ends.
    @Test func expWithinTwoUlp() {
        var rng = SplitMix64(seed: 11)
        var worst = 0.0
        for i in 0..<200_000 {
            // Uniform over [−87, 88], plus values right at the reduction's rounding boundaries.
            let x = i % 2 == 0 ? Float(rng.nextSignedUnitDouble() * 87.5 + 0.5) : Float(Double(i / 2 % 256 - 128) * 0.5 * log(2.0))
            let got = Double(SheafCPUKernels.exp(Float8(repeating: x))[3])
            let want = Foundation.exp(Double(x))
            worst = max(worst, abs(got - want) / want)
        }
        #expect(worst < 2.4e-7, "worst relative error \(worst) (2 ulp = 2.4e-7)")
        #expect(SheafCPUKernels.exp(Float8(repeating: -1000))[0] > 0)
        #expect(SheafCPUKernels.exp(Float8(repeating: 1000))[0].isFinite)
        #expect(SheafCPUKernels.exp(Float8(repeating: 0))[0] == 1)
    }

    /// Numerators and their sum against Float64, for lengths around the 8-lane width.
    @Test func softmaxAndLogSumExp() {
        var rng = SplitMix64(seed: 5)
        for count in [1, 7, 8, 9, 63, 1025, 49152] {
            let values = (0..<count).map { _ in rng.nextSignedUnitFloat() * 20 }
            // The kernel subtracts the max in float32: the reference exponentiates that same argument.
            let maxValue = values.max()!
            let wantSum = values.reduce(0.0) { $0 + Foundation.exp(Double($1 - maxValue)) }
            var row = values
            let sum = row.withUnsafeMutableBufferPointer { VectorKernels.softmaxNumerators($0.baseAddress!, count: count) }
            #expect(abs(Double(sum) - wantSum) <= 1e-5 * wantSum, "count \(count): sum \(sum) vs \(wantSum)")
            for j in 0..<count {
                let want = Foundation.exp(Double(values[j] - maxValue))
                #expect(abs(Double(row[j]) - want) <= 3e-7 * want + 1e-30, "count \(count), [\(j)]: \(row[j]) vs \(want)")
            }
            let lse = values.withUnsafeBufferPointer { VectorKernels.logSumExp($0.baseAddress!, count: count) }
            #expect(abs(lse - (Double(maxValue) + Foundation.log(wantSum))) <= 1e-6, "count \(count): log-sum-exp \(lse)")
        }
    }
}
