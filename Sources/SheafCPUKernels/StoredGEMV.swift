// One decoded token's product with a weight kept in its stored form (CPUBackend.gemvStored):
// decode reads every weight once a token, so it runs at the speed the stored bytes stream in,
// which these loops keep by converting in registers instead of writing a float32 copy first.
// `@inline(never)` on each entry point, for the reason given in HalfConversion.swift.

/// acc[j] += Σ_{i<n} x[i]·W[i, j] for j < count: a block of `count` columns of a 16-bit W (IEEE
/// float16, or bfloat16 when `bfloat`) at `w`, `rowStride` elements between rows. Four rows per
/// pass over acc (which stays in L1 for blocks of a few hundred columns); the inner loops carry
/// no reduction, so they vectorise (vcvtph2ps and FMA-free multiply-adds) as written.
@inline(never)
public func gemvHalfColumns(
    _ x: UnsafePointer<Float>, n: Int, _ w: UnsafePointer<UInt16>, rowStride: Int, bfloat: Bool, _ acc: UnsafeMutablePointer<Float>,
    count: Int
) {
    var i = 0
    if bfloat {
        while i + 4 <= n {
            let (x0, x1, x2, x3) = (x[i], x[i + 1], x[i + 2], x[i + 3])
            let (r0, r1, r2, r3) = (w + i * rowStride, w + (i + 1) * rowStride, w + (i + 2) * rowStride, w + (i + 3) * rowStride)
            for j in 0..<count {
                let a = x0 * Float(bitPattern: UInt32(r0[j]) << 16) + x1 * Float(bitPattern: UInt32(r1[j]) << 16)
                let b = x2 * Float(bitPattern: UInt32(r2[j]) << 16) + x3 * Float(bitPattern: UInt32(r3[j]) << 16)
                acc[j] += a + b
            }
            i += 4
        }
        while i < n {
            let (xi, r) = (x[i], w + i * rowStride)
            for j in 0..<count { acc[j] += xi * Float(bitPattern: UInt32(r[j]) << 16) }
            i += 1
        }
    } else {
        while i + 4 <= n {
            let (x0, x1, x2, x3) = (x[i], x[i + 1], x[i + 2], x[i + 3])
            let (r0, r1, r2, r3) = (w + i * rowStride, w + (i + 1) * rowStride, w + (i + 2) * rowStride, w + (i + 3) * rowStride)
            for j in 0..<count {
                let a = x0 * Float(Float16(bitPattern: r0[j])) + x1 * Float(Float16(bitPattern: r1[j]))
                let b = x2 * Float(Float16(bitPattern: r2[j])) + x3 * Float(Float16(bitPattern: r3[j]))
                acc[j] += a + b
            }
            i += 4
        }
        while i < n {
            let (xi, r) = (x[i], w + i * rowStride)
            for j in 0..<count { acc[j] += xi * Float(Float16(bitPattern: r[j])) }
            i += 1
        }
    }
}

/// Σ_{i<n} x[i]·(minima[g] + q_i·steps[g]), g = i / group: one output of a token's product with a
/// group-wise quantised weight, whose row holds n codes of `bits` bits packed as
/// `dequantizeRows` reads them. The row is expanded into `row` (n floats, in L1) by loops that
/// vectorise (byte to float conversions), then dotted with x on 8-lane accumulators. `codes8`
/// (n bytes) holds unpacked codes when bits < 8.
@inline(never)
public func quantizedRowDot(
    _ x: UnsafePointer<Float>, n: Int, codes: UnsafePointer<UInt8>, bits: Int, minima: UnsafePointer<Float>, steps: UnsafePointer<Float>,
    group: Int, row: UnsafeMutablePointer<Float>, codes8: UnsafeMutablePointer<UInt8>
) -> Float {
    if bits == 8 && group % 8 == 0 {
        // Σ_g m_g·Σx + s_g·Σ q·x on 8 lanes, codes widened in registers: no row buffer.
        var total: Float = 0
        var start = 0, g = 0
        while start < n {
            let end = min(n, start + group)
            var qx = Float8(repeating: 0), xs = Float8(repeating: 0)
            var i = start
            while i + 8 <= end {
                let q = Float8(SIMD8<Int32>(truncatingIfNeeded: UnsafeRawPointer(codes + i).loadUnaligned(as: SIMD8<UInt8>.self)))
                let xv = load(x + i)
                qx += q * xv
                xs += xv
                i += 8
            }
            var (qs, sx) = (horizontalSum(qx), horizontalSum(xs))
            while i < end {
                qs += Float(codes[i]) * x[i]
                sx += x[i]
                i += 1
            }
            total += minima[g] * sx + steps[g] * qs
            (start, g) = (end, g + 1)
        }
        return total
    }
    expandQuantizedRow(codes: codes, n: n, bits: bits, minima: minima, steps: steps, group: group, into: row, codes8: codes8)
    var sum = Float8(repeating: 0)
    var i = 0
    while i + 8 <= n {
        sum += load(row + i) * load(x + i)
        i += 8
    }
    var total = horizontalSum(sum)
    while i < n {
        total += row[i] * x[i]
        i += 1
    }
    return total
}

/// row[i] = minima[g] + q_i·steps[g], g = i / group, for i < n: one row of a group-wise quantised
/// matrix expanded to float32 (the product rounded before the sum, as the codec computes it), by
/// loops that vectorise. `codes8` (n bytes) holds unpacked codes when bits < 8.
@inline(never)
public func expandQuantizedRow(
    codes: UnsafePointer<UInt8>, n: Int, bits: Int, minima: UnsafePointer<Float>, steps: UnsafePointer<Float>, group: Int,
    into row: UnsafeMutablePointer<Float>, codes8: UnsafeMutablePointer<UInt8>
) {
    var q = codes
    if bits == 4 {
        for b in 0..<(n / 2) {
            let c = codes[b]
            codes8[2 * b] = c & 15
            codes8[2 * b + 1] = c >> 4
        }
        if n % 2 == 1 { codes8[n - 1] = codes[n / 2] & 15 }
        q = UnsafePointer(codes8)
    } else if bits != 8 {
        let mask = UInt32((1 << bits) - 1)
        for i in 0..<n {
            let bit = i * bits
            var word = UInt32(codes[bit >> 3])
            if (bit & 7) + bits > 8 { word |= UInt32(codes[(bit >> 3) + 1]) << 8 }
            codes8[i] = UInt8((word >> UInt32(bit & 7)) & mask)
        }
        q = UnsafePointer(codes8)
    }
    var start = 0, g = 0
    while start < n {
        let end = min(n, start + group), (m, s) = (minima[g], steps[g])
        for i in start..<end {
            let scaled = Float(q[i]) * s
            row[i] = m + scaled
        }
        (start, g) = (end, g + 1)
    }
}
