import SheafCore

/// The element and block types of ggml tensors, with ggml's own type ids (`enum ggml_type` in
/// ggml.h; block layouts in ggml-common.h). Ids 4 and 5 (the old Q4_2/Q4_3) and 31-33 are retired.
///
/// A quantised type stores `blockSize` consecutive elements of a row in `blockBytes` bytes; a
/// row's length (ne[0]) must be a whole number of blocks.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9
    case Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15
    case IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23
    case I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30
    case TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39

    /// The name ggml and llama.cpp print: "Q4_1", "F32", ...
    public var name: String { "\(self)" }

    /// Elements per block (1 for plain element types).
    public var blockSize: Int {
        switch self {
        case .F32, .F16, .BF16, .F64, .I8, .I16, .I32, .I64: 1
        case .Q4_0, .Q4_1, .Q5_0, .Q5_1, .Q8_0, .Q8_1, .IQ4_NL, .MXFP4: 32
        case .Q2_K, .Q3_K, .Q4_K, .Q5_K, .Q6_K, .Q8_K, .IQ2_XXS, .IQ2_XS, .IQ3_XXS, .IQ1_S, .IQ3_S, .IQ2_S,
            .IQ4_XS, .IQ1_M, .TQ1_0, .TQ2_0:
            256
        }
    }

    /// Bytes per block (`sizeof(block_xxx)` in ggml-common.h).
    public var blockBytes: Int {
        switch self {
        case .F32, .I32: 4
        case .F16, .BF16, .I16: 2
        case .F64, .I64: 8
        case .I8: 1
        case .Q4_0: 18  // f16 d, 16 bytes of nibbles
        case .Q4_1: 20  // f16 d, f16 m, 16 bytes of nibbles
        case .Q5_0: 22  // f16 d, 4 bytes of fifth bits, 16 bytes of nibbles
        case .Q5_1: 24  // f16 d, f16 m, 4 bytes of fifth bits, 16 bytes of nibbles
        case .Q8_0: 34  // f16 d, 32 int8
        case .Q8_1: 36  // f16 d, f16 s, 32 int8
        case .Q2_K: 84
        case .Q3_K: 110
        case .Q4_K: 144  // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        case .Q5_K: 176  // as Q4_K plus 32 bytes of fifth bits
        case .Q6_K: 210  // 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, f16 d
        case .Q8_K: 292
        case .IQ2_XXS: 66
        case .IQ2_XS: 74
        case .IQ3_XXS: 98
        case .IQ1_S: 50
        case .IQ4_NL: 18
        case .IQ3_S: 110
        case .IQ2_S: 82
        case .IQ4_XS: 136
        case .IQ1_M: 56
        case .TQ1_0: 54
        case .TQ2_0: 66
        case .MXFP4: 17
        }
    }

    /// Whether `GGMLQuant.dequantize` converts this type to Float32.
    public var isDequantizable: Bool { GGMLQuant.supported.contains(self) }
}

/// Dequantisation of ggml blocks to Float32, following the layouts of ggml-common.h and the
/// arithmetic of ggml-quants.c's `dequantize_row_*` (same operation order, so results are
/// bit-identical to ggml and to the `gguf` Python package).
///
/// Each kernel reads whole blocks from raw little-endian bytes and writes `blockSize` floats.
/// These loops are the plain reference; the tests check each against a hand-computed block.
public enum GGMLQuant {
    /// The types that can be dequantised, in the order their tests list them.
    public static let supported: [GGMLType] = [.F32, .F16, .BF16, .Q8_0, .Q4_0, .Q4_1, .Q5_0, .Q5_1, .Q4_K, .Q5_K, .Q6_K]

    /// Bytes taken by `count` elements of `type`, or nil when `count` is not a whole number of
    /// blocks or the size overflows.
    public static func byteCount(_ type: GGMLType, elements count: Int) -> Int? {
        guard count >= 0, count % type.blockSize == 0 else { return nil }
        let (bytes, overflow) = (count / type.blockSize).multipliedReportingOverflow(by: type.blockBytes)
        return overflow ? nil : bytes
    }

    /// `count` elements of `type` stored in `bytes`, as Float32 in storage order.
    public static func dequantize(_ type: GGMLType, _ bytes: UnsafeRawBufferPointer, count: Int) throws(SheafError) -> [Float] {
        guard type.isDequantizable else {
            throw .invalidArgument(
                op: "GGML dequantize",
                detail: "type \(type.name) is not supported (supported: \(supported.map(\.name).joined(separator: ", ")))")
        }
        guard let expected = byteCount(type, elements: count) else {
            throw .invalidArgument(op: "GGML dequantize", detail: "\(count) elements is not a whole number of \(type.blockSize)-element \(type.name) blocks")
        }
        guard bytes.count == expected else {
            throw .invalidArgument(op: "GGML dequantize", detail: "\(count) \(type.name) elements take \(expected) bytes, got \(bytes.count)")
        }
        if count == 0 { return [] }
        return [Float](unsafeUninitializedCapacity: count) { out, initialized in
            // Validated above: `bytes` holds exactly count / blockSize blocks and `out` has room for count floats.
            if let src = bytes.baseAddress, let dst = out.baseAddress {
                decode(type, src, blocks: count / type.blockSize, into: dst)
            }
            initialized = count
        }
    }

    /// Convenience for bytes held in an array (tests, small tensors).
    public static func dequantize(_ type: GGMLType, _ bytes: [UInt8], count: Int) throws(SheafError) -> [Float] {
        let result: Result<[Float], SheafError> = bytes.withUnsafeBytes { raw in
            do throws(SheafError) { return .success(try dequantize(type, raw, count: count)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Decodes `blocks` whole blocks from `src` into `dst`; the caller guarantees the sizes.
    static func decode(_ type: GGMLType, _ src: UnsafeRawPointer, blocks: Int, into dst: UnsafeMutablePointer<Float>) {
        let stride = type.blockBytes
        let n = type.blockSize
        switch type {
        case .F32:
            for i in 0..<blocks { dst[i] = Float(bitPattern: u32(src, 4 * i)) }
        case .F16:
            for i in 0..<blocks { dst[i] = HalfFloat.f16ToFloat(u16(src, 2 * i)) }
        case .BF16:
            for i in 0..<blocks { dst[i] = HalfFloat.bf16ToFloat(u16(src, 2 * i)) }
        case .Q8_0:
            for b in 0..<blocks { q8_0(src + b * stride, dst + b * n) }
        case .Q4_0:
            for b in 0..<blocks { q4_0(src + b * stride, dst + b * n) }
        case .Q4_1:
            for b in 0..<blocks { q4_1(src + b * stride, dst + b * n) }
        case .Q5_0:
            for b in 0..<blocks { q5_0(src + b * stride, dst + b * n) }
        case .Q5_1:
            for b in 0..<blocks { q5_1(src + b * stride, dst + b * n) }
        case .Q4_K:
            for b in 0..<blocks { q4_K(src + b * stride, dst + b * n, fifthBits: nil) }
        case .Q5_K:
            for b in 0..<blocks { q4_K(src + b * stride, dst + b * n, fifthBits: src + b * stride + 16) }
        case .Q6_K:
            for b in 0..<blocks { q6_K(src + b * stride, dst + b * n) }
        default:
            break  // unreachable: dequantize() admits only `supported`
        }
    }

    @inline(__always) static func u16(_ p: UnsafeRawPointer, _ offset: Int) -> UInt16 {
        UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inline(__always) static func u32(_ p: UnsafeRawPointer, _ offset: Int) -> UInt32 {
        UInt32(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    @inline(__always) static func f16(_ p: UnsafeRawPointer, _ offset: Int) -> Float { HalfFloat.f16ToFloat(u16(p, offset)) }

    /// Q8_0: y[i] = q[i] · d, q int8 at bytes 2..<34.
    @inline(__always) static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(p, 0)
        let q = (p + 2).assumingMemoryBound(to: Int8.self)
        for i in 0..<32 { y[i] = Float(q[i]) * d }
    }

    /// Q4_0: byte j holds element j (low nibble) and j + 16 (high nibble); y = (q − 8) · d.
    @inline(__always) static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(p, 0)
        let q = (p + 2).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = Float(Int32(q[j] & 0x0F) - 8) * d
            y[j + 16] = Float(Int32(q[j] >> 4) - 8) * d
        }
    }

    /// Q4_1: nibbles as Q4_0; y = d · q + m.
    @inline(__always) static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(p, 0)
        let m = f16(p, 2)
        let q = (p + 4).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = d * Float(q[j] & 0x0F) + m
            y[j + 16] = d * Float(q[j] >> 4) + m
        }
    }

    /// Q5_0: nibbles as Q4_0, and bit e of the little-endian u32 at byte 2 is element e's fifth
    /// bit; y = (q − 16) · d.
    @inline(__always) static func q5_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(p, 0)
        let high = u32(p, 2)
        let q = (p + 6).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            let lo = UInt32(q[j] & 0x0F) | ((high >> UInt32(j)) & 1) << 4
            let hi = UInt32(q[j] >> 4) | ((high >> UInt32(j + 16)) & 1) << 4
            y[j] = Float(Int32(lo) - 16) * d
            y[j + 16] = Float(Int32(hi) - 16) * d
        }
    }

    /// Q5_1: as Q5_0 with a minimum: y = d · q + m.
    @inline(__always) static func q5_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(p, 0)
        let m = f16(p, 2)
        let high = u32(p, 4)
        let q = (p + 8).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            let lo = UInt32(q[j] & 0x0F) | ((high >> UInt32(j)) & 1) << 4
            let hi = UInt32(q[j] >> 4) | ((high >> UInt32(j + 16)) & 1) << 4
            y[j] = d * Float(lo) + m
            y[j + 16] = d * Float(hi) + m
        }
    }

    /// The 6-bit scale and minimum of sub-block `s` (0..<8) of a Q4_K/Q5_K block, packed in 12
    /// bytes: bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7
    /// the same for the minimums; bytes 8-11 the low 4 bits of scale (low nibble) and minimum
    /// (high nibble) 4-7.
    @inline(__always) static func scaleMin(_ s: Int, _ k: UnsafePointer<UInt8>) -> (scale: UInt8, min: UInt8) {
        if s < 4 { return (k[s] & 63, k[s + 4] & 63) }
        return ((k[s + 4] & 0x0F) | (k[s - 4] >> 6) << 4, (k[s + 4] >> 4) | (k[s] >> 6) << 4)
    }

    /// Q4_K (and Q5_K when `fifthBits` points at its 32 bytes of high bits): 256 elements in 8
    /// sub-blocks of 32, y = (d · scale) · q − (dmin · min). Sub-blocks 2p and 2p+1 share the 32
    /// nibble bytes 32p..<32p+32 (low, high nibble); for Q5_K bit s of high-bit byte l is the
    /// fifth bit of element l of sub-block s.
    @inline(__always) static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, fifthBits: UnsafeRawPointer?) {
        let d = f16(p, 0)
        let dmin = f16(p, 2)
        let scales = (p + 4).assumingMemoryBound(to: UInt8.self)
        let high = fifthBits?.assumingMemoryBound(to: UInt8.self)
        let q = (p + (fifthBits == nil ? 16 : 48)).assumingMemoryBound(to: UInt8.self)
        for pair in 0..<4 {
            let (sc0, m0) = scaleMin(2 * pair, scales)
            let (sc1, m1) = scaleMin(2 * pair + 1, scales)
            let d0 = d * Float(sc0), min0 = dmin * Float(m0)
            let d1 = d * Float(sc1), min1 = dmin * Float(m1)
            let qs = q + 32 * pair
            let out = y + 64 * pair
            if let high {
                let bit0 = UInt8(1) << UInt8(2 * pair), bit1 = UInt8(2) << UInt8(2 * pair)
                for l in 0..<32 {
                    let lo = (qs[l] & 0x0F) | (high[l] & bit0 != 0 ? 16 : 0)
                    let hi = (qs[l] >> 4) | (high[l] & bit1 != 0 ? 16 : 0)
                    out[l] = d0 * Float(lo) - min0
                    out[l + 32] = d1 * Float(hi) - min1
                }
            } else {
                for l in 0..<32 {
                    out[l] = d0 * Float(qs[l] & 0x0F) - min0
                    out[l + 32] = d1 * Float(qs[l] >> 4) - min1
                }
            }
        }
    }

    /// Q6_K: 256 elements in two halves of 128; in half h, element 32g + l (g 0..<4, l 0..<32)
    /// takes its low 4 bits from byte 64h + l + 32(g % 2) (low nibble for g < 2, else high) and
    /// its top 2 bits from bits 2g..2g+1 of byte 32h + l of the high part; y = (d · scale) · (q − 32)
    /// with one int8 scale per 16 elements.
    @inline(__always) static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let ql = p.assumingMemoryBound(to: UInt8.self)
        let qh = (p + 128).assumingMemoryBound(to: UInt8.self)
        let scales = (p + 192).assumingMemoryBound(to: Int8.self)
        let d = f16(p, 208)
        for half in 0..<2 {
            let low = ql + 64 * half, top = qh + 32 * half, sc = scales + 8 * half
            let out = y + 128 * half
            for l in 0..<32 {
                let s = l / 16
                let h = top[l]
                let q0 = Int32((low[l] & 0x0F) | (h & 3) << 4) - 32
                let q1 = Int32((low[l + 32] & 0x0F) | ((h >> 2) & 3) << 4) - 32
                let q2 = Int32((low[l] >> 4) | ((h >> 4) & 3) << 4) - 32
                let q3 = Int32((low[l + 32] >> 4) | ((h >> 6) & 3) << 4) - 32
                out[l] = d * Float(sc[s]) * Float(q0)
                out[l + 32] = d * Float(sc[s + 2]) * Float(q1)
                out[l + 64] = d * Float(sc[s + 4]) * Float(q2)
                out[l + 96] = d * Float(sc[s + 6]) * Float(q3)
            }
        }
    }

    /// A (rows, cols) Q8_0 or Q4_1 tensor as the round-to-nearest codec holds it (`RoundToNearest`,
    /// groups of 32), exactly: Q4_1's y = d·q + m is the codec's m + q·s with s = d; Q8_0's y = d·q
    /// (q int8) is m + q'·s with q' = q + 128, m = −128·d (exact in F16), s = d, and m + q'·d = q·d
    /// is exact in float32. Nibbles move from Q4_1's order (byte j: elements j and j + 16) to the
    /// codec's (byte j: elements 2j and 2j + 1). nil for other types or a row not a whole number
    /// of blocks. `rowOrder[r]` is the stored row that becomes row r (nil: the same).
    public static func asRoundToNearest(
        _ type: GGMLType, _ bytes: [UInt8], rows: Int, cols: Int, rowOrder: [Int]? = nil
    ) -> (bits: Int, codes: [UInt8], minima: [Float], steps: [Float])? {
        let blockBytes = type.blockBytes
        guard type == .Q8_0 || type == .Q4_1, cols % 32 == 0, bytes.count == rows * cols / 32 * blockBytes else { return nil }
        let bits = type == .Q8_0 ? 8 : 4, blocks = cols / 32, rowBytes = cols * bits / 8
        var codes = [UInt8](repeating: 0, count: rows * rowBytes)
        var minima = [Float](repeating: 0, count: rows * blocks), steps = minima
        bytes.withUnsafeBytes { raw in
            for r in 0..<rows {
                let from = rowOrder?[r] ?? r
                for b in 0..<blocks {
                    let p = raw.baseAddress! + (from * blocks + b) * blockBytes
                    let out = r * rowBytes + b * 32 * bits / 8
                    if type == .Q8_0 {
                        let d = f16(p, 0)
                        (minima[r * blocks + b], steps[r * blocks + b]) = (-128 * d, d)
                        for i in 0..<32 { codes[out + i] = p.load(fromByteOffset: 2 + i, as: UInt8.self) ^ 0x80 }
                    } else {
                        (steps[r * blocks + b], minima[r * blocks + b]) = (f16(p, 0), f16(p, 2))
                        for j in 0..<16 {
                            // Codec element e sits in byte e/2, low nibble for even e.
                            let low = p.load(fromByteOffset: 4 + j, as: UInt8.self)  // elements j (low), j + 16 (high)
                            let (e0, e1) = (j, j + 16)
                            codes[out + e0 / 2] |= (low & 0x0F) << UInt8((e0 % 2) * 4)
                            codes[out + e1 / 2] |= (low >> 4) << UInt8((e1 % 2) * 4)
                        }
                    }
                }
            }
        }
        return (bits, codes, minima, steps)
    }
}
