// Float32 loops of the CPU backend's forward pass, written on 8-lane vectors.
//
// On x86-64 this target is compiled for AVX2 + FMA (Package.swift), so every function here may
// only run on a CPU that has them: `CPUBackend` checks `CPUFeatures.vectorKernels` first and
// otherwise keeps its portable loops. On arm64 the vectors are NEON, which every CPU has.
// Keep the interface to non-generic functions on raw pointers: a generic function instantiated
// here would be compiled with AVX2, and the linker may keep that copy for other modules too
// (`nm` on the objects should list only this module's own symbols).
//
// Swift's generic SIMD operations are written around NaN rules and rounding modes and compile to
// library calls per lane (`pointwiseMax`, `.rounded()`, float↔int conversion). The helpers below
// stay on plain arithmetic, comparisons and bit casts, which compile to single instructions.

import Foundation

public typealias Float8 = SIMD8<Float>

@inline(__always) func load(_ p: UnsafePointer<Float>) -> Float8 {
    UnsafeRawPointer(p).loadUnaligned(as: Float8.self)
}

@inline(__always) func store(_ v: Float8, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Float8.self)
}

/// The attention kernel's register blocks: two ymm registers under AVX2 (or four NEON ones), one
/// zmm register in an AVX-512 build.
public typealias Lanes16 = SIMD16<Float>

@inline(__always) func load16(_ p: UnsafePointer<Float>) -> Lanes16 {
    UnsafeRawPointer(p).loadUnaligned(as: Lanes16.self)
}

@inline(__always) func store16(_ v: Lanes16, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes16.self)
}

/// The instruction set this target was compiled for, and the /proc/cpuinfo flags a CPU needs to
/// run it (`CPUFeatures` checks them before the backend enters any loop here).
public enum KernelISA {
    #if SHEAF_AVX512
    public static let name = "AVX-512"
    public static let requiredFlags = ["avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw", "avx512dq"]
    #elseif arch(x86_64)
    public static let name = "AVX2"
    public static let requiredFlags = ["avx2", "fma", "f16c"]
    #else
    public static let name = "NEON"
    public static let requiredFlags: [String] = []
    #endif
}

@inline(__always) func maximum(_ a: Float8, _ b: Float8) -> Float8 { a.replacing(with: b, where: b .> a) }

@inline(__always) func horizontalMax(_ v: Float8) -> Float {
    let four = maximum(Float8(lowHalf: v.lowHalf, highHalf: v.lowHalf), Float8(lowHalf: v.highHalf, highHalf: v.highHalf))
    return max(max(four[0], four[1]), max(four[2], four[3]))
}

@inline(__always) func horizontalSum(_ v: Float8) -> Float {
    let four = v.lowHalf + v.highHalf
    return (four[0] + four[2]) + (four[1] + four[3])
}

/// e^x per lane, within 2 ulp over [−87.3, 88] (inputs outside are clamped: e^−87.3 ≈ 1.2e−38,
/// so underflow stops at about the smallest normal, never a denormal; e^88 ≈ 1.7e38, never ∞).
/// x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in two so n·ln2_hi is exact), e^r from Cephes'
/// degree-5 polynomial e^r ≈ 1 + r + r²·P(r), and 2^n assembled in the exponent bits. n is
/// rounded by adding 1.5·2²³: the sum's low mantissa bits then hold n as an integer.
@inline(__always) public func exp(_ x: Float8) -> Float8 {
    var x = maximum(x, Float8(repeating: -87.336_54))
    x = x.replacing(with: Float8(repeating: 88), where: x .> Float8(repeating: 88))
    let roundingShift: Float = 12_582_912  // 1.5 · 2²³
    let t = x * 1.442_695_04 + roundingShift
    let n = t - roundingShift
    var r = x.addingProduct(n, Float8(repeating: -0.693_359_375))
    r = r.addingProduct(n, Float8(repeating: 2.121_944_40e-4))
    var p = Float8(repeating: 1.987_569_150_0e-4)
    p = Float8(repeating: 1.398_199_950_7e-3).addingProduct(p, r)
    p = Float8(repeating: 8.333_451_907_3e-3).addingProduct(p, r)
    p = Float8(repeating: 4.166_579_589_4e-2).addingProduct(p, r)
    p = Float8(repeating: 1.666_666_545_9e-1).addingProduct(p, r)
    p = Float8(repeating: 5.000_000_120_1e-1).addingProduct(p, r)
    p = (r + 1).addingProduct(p, r * r)
    // t's bit pattern is 0x4B40_0000 + n: turn n into the exponent field of 2^n.
    let twoToN = (unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    return p * unsafeBitCast(twoToN, to: Float8.self)
}

/// The row loops built on `exp`. Each takes raw float32 pointers and a length; tails shorter
/// than 8 run one lane at a time through the same vector code, so every element sees one formula.
public enum VectorKernels {
    /// max(row[0..<count]), −∞ when count is 0.
    static func maximum(_ row: UnsafePointer<Float>, count: Int) -> Float {
        var lanesMax = Float8(repeating: -.infinity)
        var i = 0
        while i + 8 <= count {
            lanesMax = SheafCPUKernels.maximum(lanesMax, load(row + i))
            i += 8
        }
        var rowMax = horizontalMax(lanesMax)
        while i < count {
            rowMax = max(rowMax, row[i])
            i += 1
        }
        return rowMax
    }

    /// Replaces row[0..<count] by e^(row − max(row)) and returns their sum (≥ 1 when count > 0):
    /// the softmax numerators; the caller divides by the sum where it is cheapest.
    public static func softmaxNumerators(_ row: UnsafeMutablePointer<Float>, count: Int) -> Float {
        let rowMax = maximum(row, count: count), shift = Float8(repeating: rowMax)
        var i = 0
        var lanesSum = Float8()
        while i + 8 <= count {
            let e = exp(load(row + i) - shift)
            store(e, row + i)
            lanesSum += e
            i += 8
        }
        var sum = horizontalSum(lanesSum)
        while i < count {
            let e = exp(Float8(repeating: row[i] - rowMax))[0]
            row[i] = e
            sum += e
            i += 1
        }
        return sum
    }

    /// log Σ e^row[j] over row[0..<count], as max + log Σ e^(row − max); the sum is carried in
    /// Float64 across blocks of 1024 so a 49,152-entry vocabulary loses nothing to float32 sums.
    public static func logSumExp(_ row: UnsafePointer<Float>, count: Int) -> Double {
        let rowMax = maximum(row, count: count), shift = Float8(repeating: rowMax)
        var i = 0
        var total = 0.0
        while i + 8 <= count {
            var lanesSum = Float8()
            let end = min(count, i + 1024)
            while i + 8 <= end {
                lanesSum += exp(load(row + i) - shift)
                i += 8
            }
            total += Double(horizontalSum(lanesSum))
        }
        while i < count {
            total += Double(exp(Float8(repeating: row[i] - rowMax))[0])
            i += 1
        }
        return Double(rowMax) + log(total)
    }

    /// KL(softmax(a) ‖ softmax(b)) over a[0..<count], b[0..<count], nats: S/Z_a − m_a + m_b −
    /// log Z_a + log Z_b with Z = Σ e^(x − m) and S = Σ e^(a − m_a)·(a − b), the lane sums
    /// carried into Float64 every 1024 entries as in `logSumExp`; clamped at 0.
    public static func klDivergence(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Double {
        let (ma, mb) = (maximum(a, count: count), maximum(b, count: count))
        let (shiftA, shiftB) = (Float8(repeating: ma), Float8(repeating: mb))
        var i = 0
        var (za, zb, s) = (0.0, 0.0, 0.0)
        while i + 8 <= count {
            var (lanesA, lanesB, lanesS) = (Float8(), Float8(), Float8())
            let end = min(count, i + 1024)
            while i + 8 <= end {
                let (x, y) = (load(a + i), load(b + i))
                let ea = exp(x - shiftA)
                lanesA += ea
                lanesB += exp(y - shiftB)
                lanesS += ea * (x - y)
                i += 8
            }
            za += Double(horizontalSum(lanesA))
            zb += Double(horizontalSum(lanesB))
            s += Double(horizontalSum(lanesS))
        }
        while i < count {
            let ea = exp(Float8(repeating: a[i] - ma))[0]
            za += Double(ea)
            zb += Double(exp(Float8(repeating: b[i] - mb))[0])
            s += Double(ea * (a[i] - b[i]))
            i += 1
        }
        return max(0, s / za - Double(ma) + Double(mb) - log(za) + log(zb))
    }

    /// out[j] = silu(gate[j]) · up[j] = gate[j] / (1 + e^−gate[j]) · up[j] for j < count (out may
    /// alias gate).
    public static func siluMultiply(
        gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int
    ) {
        var i = 0
        while i + 8 <= count {
            let g = load(gate + i)
            store(g / (1 + exp(-g)) * load(up + i), out + i)
            i += 8
        }
        while i < count {
            let g = gate[i]
            out[i] = g / (1 + exp(Float8(repeating: -g))[0]) * up[i]
            i += 1
        }
    }

    /// RoPE in the rotate-half layout on one head: (a, b) = (x[i], x[i + half]) becomes
    /// (a·cos − b·sin, b·cos + a·sin) for i < half.
    public static func rotateHalves(
        _ x: UnsafeMutablePointer<Float>, half: Int, cosines: UnsafePointer<Float>, sines: UnsafePointer<Float>
    ) {
        var i = 0
        while i + 8 <= half {
            let a = load(x + i), b = load(x + half + i), c = load(cosines + i), s = load(sines + i)
            store(a * c - b * s, x + i)
            store(b * c + a * s, x + half + i)
            i += 8
        }
        while i < half {
            let a = x[i], b = x[half + i]
            x[i] = a * cosines[i] - b * sines[i]
            x[half + i] = b * cosines[i] + a * sines[i]
            i += 1
        }
    }

    /// out = x / √(mean(x²) + eps) · weight over count elements (out may alias x). The sum of
    /// squares runs in 8 lanes: a scalar sum is one dependent add chain (4 cycles per element).
    public static func rmsNorm(
        _ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float, out: UnsafeMutablePointer<Float>, count: Int
    ) {
        var lanes = Float8()
        var i = 0
        while i + 8 <= count {
            let v = load(x + i)
            lanes = lanes.addingProduct(v, v)
            i += 8
        }
        var sumSquares = horizontalSum(lanes)
        while i < count {
            sumSquares += x[i] * x[i]
            i += 1
        }
        let scale = 1 / (sumSquares / Float(count) + eps).squareRoot()
        let s = Float8(repeating: scale)
        i = 0
        while i + 8 <= count {
            store(load(x + i) * s * load(weight + i), out + i)
            i += 8
        }
        while i < count {
            out[i] = x[i] * scale * weight[i]
            i += 1
        }
    }

    /// row[0..<count] *= factor.
    public static func scale(_ row: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        let f = Float8(repeating: factor)
        var i = 0
        while i + 8 <= count {
            store(load(row + i) * f, row + i)
            i += 8
        }
        while i < count {
            row[i] *= factor
            i += 1
        }
    }
}
