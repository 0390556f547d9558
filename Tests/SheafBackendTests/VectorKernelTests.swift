import Foundation
import SheafBackend
import SheafCPUKernels
import SheafCore
import SheafTestSupport
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
        // 2 ulp; an ulp of a Float32 is at most 2u relative.
        #expect(worst < 4 * Roundoff.float32, "worst relative error \(worst) (2 ulp = 2.4e-7)")
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
            // Each numerator within 2 ulp (4u), plus a positive Float32 sum in 8 lanes of count/8
            // terms and a 3-level tree across them: γ_{count/8 + 3} relative.
            let sumBound = (4 * Roundoff.float32 + Roundoff.gamma(count / 8 + 3, unit: Roundoff.float32)) * wantSum
            #expect(abs(Double(sum) - wantSum) <= sumBound, "count \(count): sum \(sum) vs \(wantSum)")
            for j in 0..<count {
                let want = Foundation.exp(Double(values[j] - maxValue))
                // exp within 2 ulp (4u) and the store (u); the floor covers results below Float32's
                // normal range, where the spacing is absolute.
                #expect(abs(Double(row[j]) - want) <= 5 * Roundoff.float32 * want + Double(Float.leastNonzeroMagnitude),
                        "count \(count), [\(j)]: \(row[j]) vs \(want)")
            }
            let lse = values.withUnsafeBufferPointer { VectorKernels.logSumExp($0.baseAddress!, count: count) }
            // log turns the sum's relative error into an absolute one; log and the add round
            // once each relative to their results.
            let wantLSE = Double(maxValue) + Foundation.log(wantSum)
            let lseBound = sumBound / wantSum + 4 * Roundoff.float32 * (abs(Foundation.log(wantSum)) + abs(wantLSE))
            #expect(abs(Double(lse) - wantLSE) <= lseBound, "count \(count): log-sum-exp \(lse)")
        }
    }
}
