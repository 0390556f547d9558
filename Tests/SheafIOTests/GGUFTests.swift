import Foundation
import SheafCore
import SheafIO
import Testing

// MARK: - Helpers: a writer-free GGUF serialiser and temporary files

/// Little-endian byte building for hand-made GGUF files and quant blocks.
struct LEBytes {
    var bytes: [UInt8] = []
    mutating func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) {
        append(UInt64(s.utf8.count))
        bytes += Array(s.utf8)
    }
}

/// One tensor of a synthetic GGUF: `ne` innermost first, a raw ggml type id, and its bytes.
/// `offset` overrides the info's data offset (the bytes are still placed at the packed position).
struct SyntheticTensor {
    var name: String
    var ne: [UInt64]
    var type: UInt32
    var data: [UInt8]
    var offset: UInt64? = nil
}

/// Serialises a little-endian GGUF the way llama.cpp lays it out: header, metadata, tensor
/// infos, padding to the alignment, then each tensor's bytes at an aligned offset.
struct SyntheticGGUF {
    var magic: [UInt8] = Array("GGUF".utf8)
    var version: UInt32 = 3
    var metadata: [(String, GGUFValue)] = []
    var tensors: [SyntheticTensor] = []
    var alignment = 32
    var tensorCountOverride: UInt64? = nil
    var kvCountOverride: UInt64? = nil
    /// Set by `serialise`: where the data section starts.
    var dataOffset = 0

    static func typeID(_ v: GGUFValue) -> UInt32 {
        switch v {
        case .uint8: 0
        case .int8: 1
        case .uint16: 2
        case .int16: 3
        case .uint32: 4
        case .int32: 5
        case .float32: 6
        case .bool: 7
        case .string: 8
        case .array: 9
        case .uint64: 10
        case .int64: 11
        case .float64: 12
        case .skippedArray: 9
        }
    }

    static func write(_ v: GGUFValue, to w: inout LEBytes) {
        switch v {
        case .uint8(let x): w.append(x)
        case .int8(let x): w.append(x)
        case .uint16(let x): w.append(x)
        case .int16(let x): w.append(x)
        case .uint32(let x): w.append(x)
        case .int32(let x): w.append(x)
        case .float32(let x): w.append(x.bitPattern)
        case .bool(let x): w.append(UInt8(x ? 1 : 0))
        case .string(let s): w.string(s)
        case .uint64(let x): w.append(x)
        case .int64(let x): w.append(x)
        case .float64(let x): w.append(x.bitPattern)
        case .skippedArray: break  // only ever read
        case .array(let a):
            w.append(a.first.map(typeID) ?? 0)  // an empty array is written as an array of u8
            w.append(UInt64(a.count))
            for e in a { write(e, to: &w) }
        }
    }

    mutating func serialise() -> [UInt8] {
        var w = LEBytes()
        w.bytes = magic
        w.append(version)
        w.append(tensorCountOverride ?? UInt64(tensors.count))
        w.append(kvCountOverride ?? UInt64(metadata.count))
        for (key, value) in metadata {
            w.string(key)
            w.append(Self.typeID(value))
            Self.write(value, to: &w)
        }
        var packed: [Int] = []
        var end = 0
        for t in tensors {
            let start = (end + alignment - 1) / alignment * alignment
            packed.append(start)
            end = start + t.data.count
        }
        for (t, start) in zip(tensors, packed) {
            w.string(t.name)
            w.append(UInt32(t.ne.count))
            for d in t.ne { w.append(d) }
            w.append(t.type)
            w.append(t.offset ?? UInt64(start))
        }
        while w.bytes.count % alignment != 0 { w.bytes.append(0) }
        dataOffset = w.bytes.count
        var section = [UInt8](repeating: 0, count: end)
        for (t, start) in zip(tensors, packed) { section.replaceSubrange(start..<start + t.data.count, with: t.data) }
        return w.bytes + section
    }
}

func ggufTemporaryFolder() throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-gguf-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func writeFile(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

/// Opens `bytes` as a GGUF and reads every tensor; returns the error it threw, if any.
func loadEverything(_ bytes: [UInt8], at path: String) throws -> SheafError? {
    try writeFile(bytes, path)
    do throws(SheafError) {
        let file = try GGUFFile(path: path)
        for name in file.tensorNames {
            let info = try file.info(name)
            let values = try file.float32(name)
            guard values.count == info.elementCount else {
                return .io(path: path, detail: "test: \(name) gave \(values.count) values for shape \(info.shape)")
            }
        }
        return nil
    } catch {
        return error
    }
}

func f16Bits(_ bits: UInt16) -> [UInt8] { [UInt8(bits & 0xFF), UInt8(bits >> 8)] }

/// Compares bit patterns so -0, NaN and infinities count too.
func expectBits(_ got: [Float], _ want: [Float], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(got.count == want.count, sourceLocation: sourceLocation)
    let mismatches = zip(got, want).enumerated().filter { $0.element.0.bitPattern != $0.element.1.bitPattern }
    #expect(mismatches.isEmpty, "first mismatches (index, got, want): \(mismatches.prefix(4).map { ($0.offset, $0.element.0, $0.element.1) })", sourceLocation: sourceLocation)
}

// MARK: - (a) Hand-computed blocks, one per type

/// Each test builds one block by hand from ggml's layout (ggml-common.h): the f16 scales are
/// written as literal bits, the quants come from a small formula q(e), and the expected values
/// from the type's dequantisation formula on q(e). Values are chosen so every product is exact.
/// Each is also decoded as two consecutive blocks to check the block stride.
@Suite struct GGUFQuantBlockTests {
    func check(_ type: GGMLType, _ block: [UInt8], _ expected: [Float], sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(block.count == type.blockBytes, "block bytes", sourceLocation: sourceLocation)
        #expect(expected.count == type.blockSize, "block elements", sourceLocation: sourceLocation)
        expectBits(try GGMLQuant.dequantize(type, block, count: expected.count), expected, sourceLocation: sourceLocation)
        if type.blockSize > 1 {
            expectBits(try GGMLQuant.dequantize(type, block + block, count: 2 * expected.count), expected + expected, sourceLocation: sourceLocation)
        }
    }

    @Test func f32() throws {
        // 1, −π rounded to nearest (0x40490FDB = 3.1415927410125732; Swift's Float.pi rounds
        // down), the smallest subnormal, +∞, −0.
        let bits: [UInt32] = [0x3F80_0000, 0xC049_0FDB, 0x0000_0001, 0x7F80_0000, 0x8000_0000]
        var w = LEBytes()
        for b in bits { w.append(b) }
        expectBits(try GGMLQuant.dequantize(.F32, w.bytes, count: 5), [1, -3.1415927410125732, 0x1p-149, .infinity, -0.0])
    }

    @Test func f16() throws {
        // 0x3555: exponent 13 → 2⁻², mantissa 341/1024 → 0.25 · 1365/1024.
        let bits: [UInt16] = [0x3C00, 0xC000, 0x0001, 0x7BFF, 0xFC00, 0x3555]
        let bytes = bits.flatMap(f16Bits)
        expectBits(try GGMLQuant.dequantize(.F16, bytes, count: 6), [1, -2, 0x1p-24, 65504, -.infinity, 0.333251953125])
    }

    @Test func bf16() throws {
        // 0xC2F7 → f32 0xC2F70000: −2⁶ · (1 + 119/128) = −123.5; 0x0001 → 2⁻¹⁴⁹ · 2¹⁶.
        let bits: [UInt16] = [0x3F80, 0xC2F7, 0x0001, 0x7F80]
        expectBits(try GGMLQuant.dequantize(.BF16, bits.flatMap(f16Bits), count: 4), [1, -123.5, 0x1p-133, .infinity])
    }

    @Test func q8_0() throws {
        // d = 0.5 (f16 0x3800), q[e] = 8e − 128 (int8), except q[31] = 127.
        let q: [Int] = (0..<32).map { $0 == 31 ? 127 : 8 * $0 - 128 }
        let block = f16Bits(0x3800) + q.map { UInt8(bitPattern: Int8($0)) }
        try check(.Q8_0, block, q.map { Float($0) * 0.5 })
    }

    @Test func q4_0() throws {
        // d = 0.375 (0x3600); byte j holds q(j) in its low nibble and q(j + 16) in its high one.
        let q = (0..<32).map { ($0 * 5 + 3) % 16 }
        let block = f16Bits(0x3600) + (0..<16).map { UInt8(q[$0] | q[$0 + 16] << 4) }
        try check(.Q4_0, block, q.map { Float($0 - 8) * 0.375 })
    }

    @Test func q4_1() throws {
        // d = 0.5 (0x3800), m = −0.75 (0xBA00); y = d·q + m.
        let q = (0..<32).map { ($0 * 7 + 1) % 16 }
        let block = f16Bits(0x3800) + f16Bits(0xBA00) + (0..<16).map { UInt8(q[$0] | q[$0 + 16] << 4) }
        try check(.Q4_1, block, q.map { 0.5 * Float($0) - 0.75 })
    }

    /// Q8_0 and Q4_1 blocks as the round-to-nearest codec holds them expand to exactly what
    /// ggml's dequantisation gives (two rows of two blocks each, the second row's blocks swapped
    /// by a row order), the same bits; other types and ragged rows are not converted.
    @Test func q8_0AndQ4_1AsTheCodecExpandToTheSameBits() throws {
        let q8: [UInt8] = (0..<32).map { (e: Int) -> UInt8 in UInt8(bitPattern: Int8(e == 31 ? 127 : 8 * e - 128)) }
        let q4: [UInt8] = (0..<16).map { (j: Int) -> UInt8 in
            let (low, high) = ((j * 7 + 1) % 16, (j * 3 + 5) % 16)
            return UInt8(low | high << 4)
        }
        let q8Blocks: [[UInt8]] = [f16Bits(0x3800) + q8, f16Bits(0xB555) + q8.reversed(), f16Bits(0x0001) + q8, f16Bits(0x7BFF) + q8]
        let q4Blocks: [[UInt8]] = [
            f16Bits(0x3800) + f16Bits(0xBA00) + q4, f16Bits(0x2E66) + f16Bits(0x4100) + q4.reversed(),
            f16Bits(0x0400) + f16Bits(0x8001) + q4, f16Bits(0xC000) + f16Bits(0x3C00) + q4,
        ]
        let blocks: [(GGMLType, [[UInt8]])] = [(.Q8_0, q8Blocks), (.Q4_1, q4Blocks)]
        for (type, b) in blocks {
            let bytes = b.flatMap { $0 }
            let want = try GGMLQuant.dequantize(type, bytes, count: 128)
            for order in [[0, 1], [1, 0]] {
                let converted = try #require(GGMLQuant.asRoundToNearest(type, bytes, rows: 2, cols: 64, rowOrder: order))
                let got = RoundToNearest.dequantize(
                    codes: converted.codes.map(Float.init), minima: converted.minima, steps: converted.steps, dOut: 2, dIn: 64,
                    bits: converted.bits, group: 32)
                let expected = order.flatMap { Array(want[($0 * 64)..<($0 * 64 + 64)]) }
                // Equal values; only a zero's sign may differ (ggml's q·d with d < 0 and q = 0 is −0,
                // the codec's sum −128·d + 128·d is +0).
                #expect(got == expected, "\(type) rows \(order)")
                #expect(zip(got, expected).allSatisfy { $0.bitPattern == $1.bitPattern || $0 == 0 }, "\(type) rows \(order)")
            }
        }
        #expect(GGMLQuant.asRoundToNearest(.Q4_0, Array(repeating: 0, count: 18), rows: 1, cols: 32) == nil)
        #expect(GGMLQuant.asRoundToNearest(.Q8_0, Array(repeating: 0, count: 34), rows: 2, cols: 16) == nil)
    }

    /// Q5_0/Q5_1: bit e of the little-endian u32 holds element e's fifth bit.
    func fifthBits(_ q: [Int]) -> [UInt8] {
        var high: UInt32 = 0
        for (e, v) in q.enumerated() { high |= UInt32(v >> 4) << UInt32(e) }
        var w = LEBytes()
        w.append(high)
        return w.bytes
    }

    @Test func q5_0() throws {
        // d = 0.25 (0x3400); y = (q − 16)·d with q in 0..<32.
        let q = (0..<32).map { ($0 * 11 + 5) % 32 }
        #expect(q.contains { $0 >= 16 } && q.contains { $0 < 16 })
        let block = f16Bits(0x3400) + fifthBits(q) + (0..<16).map { UInt8(q[$0] & 15 | (q[$0 + 16] & 15) << 4) }
        try check(.Q5_0, block, q.map { Float($0 - 16) * 0.25 })
    }

    @Test func q5_1() throws {
        // d = 0.125 (0x3000), m = 2 (0x4000); y = d·q + m.
        let q = (0..<32).map { ($0 * 13 + 7) % 32 }
        let block = f16Bits(0x3000) + f16Bits(0x4000) + fifthBits(q) + (0..<16).map { UInt8(q[$0] & 15 | (q[$0 + 16] & 15) << 4) }
        try check(.Q5_1, block, q.map { 0.125 * Float($0) + 2 })
    }

    /// Sub-block scales and minimums for the K-quant tests, and their 12-byte packing worked out
    /// by hand: bytes 0-3 = scale[0..3] | (scale[4..7] >> 4) << 6, bytes 4-7 the same for the
    /// minimums, bytes 8-11 = (scale[4..7] & 15) | (min[4..7] & 15) << 4.
    /// e.g. byte 0 = 1 | (17 >> 4) << 6 = 65; byte 11 = (63 & 15) | (9 & 15) << 4 = 159.
    static let kScales: [Float] = [1, 2, 3, 4, 17, 34, 51, 63]
    static let kMins: [Float] = [5, 6, 7, 8, 20, 40, 60, 9]
    static let kPacked: [UInt8] = [65, 130, 195, 196, 69, 134, 199, 8, 65, 130, 195, 159]

    /// 4-bit quants of 256 elements: bytes 32p..<32p+32 hold sub-block 2p (low nibbles) and 2p+1 (high).
    func kNibbles(_ q: [Int]) -> [UInt8] {
        (0..<128).map { i in
            let (p, l) = (i / 32, i % 32)
            return UInt8(q[64 * p + l] & 15 | (q[64 * p + 32 + l] & 15) << 4)
        }
    }

    @Test func q4_K() throws {
        // d = 0.25 (0x3400), dmin = 0.5 (0x3800); y = d·scale[s]·q − dmin·min[s], s = e / 32.
        let q = (0..<256).map { ($0 * 7 + $0 / 32) % 16 }
        let block = f16Bits(0x3400) + f16Bits(0x3800) + Self.kPacked + kNibbles(q)
        try check(.Q4_K, block, (0..<256).map { e in 0.25 * Self.kScales[e / 32] * Float(q[e]) - 0.5 * Self.kMins[e / 32] })
    }

    @Test func q5_K() throws {
        // d = 0.125 (0x3000), dmin = 1.5 (0x3E00); bit s of high-bit byte l is the fifth bit of element 32s + l.
        let q = (0..<256).map { ($0 * 13 + 3 * ($0 / 32)) % 32 }
        let high: [UInt8] = (0..<32).map { l in (0..<8).reduce(UInt8(0)) { $0 | UInt8(q[32 * $1 + l] >> 4) << UInt8($1) } }
        let block = f16Bits(0x3000) + f16Bits(0x3E00) + Self.kPacked + high + kNibbles(q)
        try check(.Q5_K, block, (0..<256).map { e in 0.125 * Self.kScales[e / 32] * Float(q[e]) - 1.5 * Self.kMins[e / 32] })
    }

    @Test func q6_K() throws {
        // d = 0.0625 (0x2C00), one int8 scale per 16 elements; y = d·scale·(q − 32), q in 0..<64.
        // Element e: half h = e / 128, group g = (e % 128) / 32, l = e % 32; low 4 bits in byte
        // 64h + l + 32(g % 2) (high nibble when g ≥ 2), top 2 bits at bit 2g of byte 32h + l.
        let q = (0..<256).map { ($0 * 29 + 7) % 64 }
        let scales: [Int8] = [1, -2, 3, -4, 5, -6, 7, -8, 127, -128, 10, -11, 12, -13, 14, -15]
        var low = [UInt8](repeating: 0, count: 128)
        var high = [UInt8](repeating: 0, count: 64)
        for e in 0..<256 {
            let (h, g, l) = (e / 128, (e % 128) / 32, e % 32)
            low[64 * h + l + 32 * (g % 2)] |= UInt8(q[e] & 15) << UInt8(4 * (g / 2))
            high[32 * h + l] |= UInt8(q[e] >> 4) << UInt8(2 * g)
        }
        let block = low + high + scales.map { UInt8(bitPattern: $0) } + f16Bits(0x2C00)
        try check(.Q6_K, block, (0..<256).map { e in 0.0625 * Float(scales[e / 16]) * Float(q[e] - 32) })
    }

    /// Seeded random blocks of every supported type against gguf-py (scripts/gguf_golden.py makes
    /// the same bytes with the same SplitMix64): sha256 of the float32 output, bit for bit.
    static let randomGolden: [(GGMLType, String)] = [
        (.F32, "61cbd69d950d8186006947e00d16e5e0aa2c21ed40714a9975de2009fa764738"),
        (.F16, "68728fd6c75aefc099516d14f72a859553619e90f84f5abf921ac2ce78f73547"),
        (.BF16, "5757ae400f0f7d926cae7094459ac7b599d7b7cdf2fc79834d9e554dc09fc2bb"),
        (.Q8_0, "d5cf121b2b88b41c8ca0e20da1eec35e51023d0b884a50d9e8ae345268aca538"),
        (.Q4_0, "54910accde15c651ee59a697d7645bdd1190dee189c718a9badf5257009a90ca"),
        (.Q4_1, "b3d11e9a8f9064ff61555a8b135fbadab1c218897773523d9b0246b4f8f210cd"),
        (.Q5_0, "e97d10a03aa9b8b78669b287aef545639e3f8d4cfebadbc0ae9989ddacebb640"),
        (.Q5_1, "a2e37dbc637c6f90fcb20faba26e3ad199c55140d25bce5146ecff72c7a7e832"),
        (.Q4_K, "bb1dff83dcc95ebe0d3945d1b7fb613611f5d2936fb86590473f35d74fe13fe8"),
        (.Q5_K, "554bd00aa6808d975b936dbf040bb761d0d513643c5a72c52ff6e4f36bdb8a1f"),
        (.Q6_K, "4f71519fbdca48c58613b81326e0758eafffc2b401189176abf9ca838c46c7c8"),
    ]

    /// Byte offsets of the f16 scale fields in one block (forced finite in the random bytes).
    static func scaleOffsets(_ type: GGMLType) -> [Int] {
        switch type {
        case .F16, .Q8_0, .Q4_0, .Q5_0: [0]
        case .Q4_1, .Q5_1, .Q4_K, .Q5_K: [0, 2]
        case .Q6_K: [208]
        default: []
        }
    }

    /// The bytes scripts/gguf_golden.py's `random_bytes` makes: 4 blocks (64 elements for plain
    /// types) from SplitMix64(1000 + type id); f16 scales get exponents 10-17, BF16/F32
    /// elements exponents 120-135, so every value is finite.
    static func randomBytes(_ type: GGMLType) -> (bytes: [UInt8], count: Int) {
        let blocks = type.blockSize > 1 ? 4 : 64
        var rng = SplitMix64(seed: 1000 + UInt64(type.rawValue))
        var data = (0..<blocks * type.blockBytes).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        func u16(_ o: Int) -> UInt16 { UInt16(data[o]) | UInt16(data[o + 1]) << 8 }
        func put16(_ o: Int, _ v: UInt16) { (data[o], data[o + 1]) = (UInt8(v & 0xFF), UInt8(v >> 8)) }
        for b in 0..<blocks {
            let base = b * type.blockBytes
            for o in scaleOffsets(type) {
                let bits = u16(base + o)
                put16(base + o, bits & 0x83FF | (10 + (bits >> 10) & 7) << 10)
            }
            if type == .BF16 {
                let bits = u16(base)
                put16(base, bits & 0x807F | (120 + (bits >> 7) & 15) << 7)
            }
            if type == .F32 {
                var bits = UInt32(u16(base)) | UInt32(u16(base + 2)) << 16
                bits = bits & 0x807F_FFFF | (120 + (bits >> 23) & 15) << 23
                put16(base, UInt16(bits & 0xFFFF))
                put16(base + 2, UInt16(bits >> 16))
            }
        }
        return (data, blocks * type.blockSize)
    }

    @Test func randomBlocksMatchGGUFPy() throws {
        #expect(Self.randomGolden.map(\.0) == GGMLQuant.supported)
        for (type, sha) in Self.randomGolden {
            let (bytes, count) = Self.randomBytes(type)
            let values = try GGMLQuant.dequantize(type, bytes, count: count)
            #expect(values.allSatisfy { $0.isFinite }, "\(type.name)")
            #expect(values.withUnsafeBytes { SHA256.hex($0) } == sha, "\(type.name)")
        }
    }

    @Test func typeTableMatchesGGML() {
        // Ids, block sizes and bytes from ggml.h / ggml-common.h (and gguf-py's GGML_QUANT_SIZES).
        let table: [(GGMLType, UInt32, Int, Int)] = [
            (.F32, 0, 1, 4), (.F16, 1, 1, 2), (.Q4_0, 2, 32, 18), (.Q4_1, 3, 32, 20), (.Q5_0, 6, 32, 22),
            (.Q5_1, 7, 32, 24), (.Q8_0, 8, 32, 34), (.Q8_1, 9, 32, 36), (.Q2_K, 10, 256, 84), (.Q3_K, 11, 256, 110),
            (.Q4_K, 12, 256, 144), (.Q5_K, 13, 256, 176), (.Q6_K, 14, 256, 210), (.Q8_K, 15, 256, 292),
            (.IQ4_NL, 20, 32, 18), (.IQ4_XS, 23, 256, 136), (.BF16, 30, 1, 2), (.TQ2_0, 35, 256, 66), (.MXFP4, 39, 32, 17),
        ]
        for (type, id, size, bytes) in table {
            #expect(type.rawValue == id && type.blockSize == size && type.blockBytes == bytes, "\(type.name)")
        }
        #expect(GGMLQuant.supported.map(\.name) == ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
    }

    @Test func dequantizeRejectsBadSizesAndUnsupportedTypes() {
        #expect(throws: SheafError.self) { try GGMLQuant.dequantize(.Q4_1, [UInt8](repeating: 0, count: 19), count: 32) }
        #expect(throws: SheafError.self) { try GGMLQuant.dequantize(.Q4_1, [UInt8](repeating: 0, count: 20), count: 31) }
        #expect(throws: SheafError.self) { try GGMLQuant.dequantize(.Q2_K, [UInt8](repeating: 0, count: 84), count: 256) }
        #expect(throws: SheafError.self) { try GGMLQuant.dequantize(.I32, [UInt8](repeating: 0, count: 4), count: 1) }
        #expect((try? GGMLQuant.dequantize(.Q4_1, [], count: 0)) == [])
    }
}

// MARK: - (b) Synthetic files round-trip

@Suite struct GGUFFileTests {
    /// Metadata with every value type, nested and empty arrays, and non-ASCII text.
    static let metadata: [(String, GGUFValue)] = [
        ("general.architecture", .string("llama")),
        ("general.name", .string("tiny ünïcode 🦙 \"quoted\"")),
        ("test.u8", .uint8(200)), ("test.i8", .int8(-100)), ("test.u16", .uint16(60000)), ("test.i16", .int16(-30000)),
        ("test.u32", .uint32(4_000_000_000)), ("test.i32", .int32(-2_000_000_000)), ("test.f32", .float32(-1.5e-3)),
        ("test.bool.true", .bool(true)), ("test.bool.false", .bool(false)),
        ("test.u64", .uint64(18_000_000_000_000_000_000)), ("test.i64", .int64(-9_000_000_000_000_000_000)),
        ("test.f64", .float64(3.141592653589793)),
        ("test.strings", .array([.string("a"), .string(""), .string("Ġthe"), .string("ü")])),
        ("test.ints", .array([.int32(1), .int32(-2), .int32(3)])),
        ("test.floats", .array([.float32(0.5), .float32(-0.25)])),
        ("test.nested", .array([.array([.uint8(1), .uint8(2)]), .array([.uint8(3)])])),
        ("test.empty", .array([])),
        ("llama.block_count", .uint32(2)),
    ]

    static let f32Values: [Float] = (0..<15).map { Float($0) * 0.25 - 1 }
    /// f16 values exactly representable, and their bits.
    static let f16Values: [Float] = [1, -2, 0.5, 0.375, 65504, -0.0, 2, 1.5]
    static let f16Bytes: [UInt8] = [0x3C00, 0xC000, 0x3800, 0x3600, 0x7BFF, 0x8000, 0x4000, 0x3E00].flatMap(f16Bits)
    /// Two Q8_0 blocks: d = 0.5 then d = 2, q[e] = e − 16.
    static let q8Bytes: [UInt8] = f16Bits(0x3800) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) } + f16Bits(0x4000) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
    static let q8Values: [Float] = (0..<32).map { Float($0 - 16) * 0.5 } + (0..<32).map { Float($0 - 16) * 2 }

    static func sample(version: UInt32 = 3, alignment: Int? = nil) -> SyntheticGGUF {
        var metadata = Self.metadata
        if let alignment { metadata.append(("general.alignment", .uint32(UInt32(alignment)))) }
        var w = LEBytes()
        for v in f32Values { w.append(v.bitPattern) }
        return SyntheticGGUF(
            version: version, metadata: metadata,
            tensors: [
                SyntheticTensor(name: "blk.0.weight", ne: [5, 3], type: 0, data: w.bytes),  // PyTorch [3, 5]
                SyntheticTensor(name: "blk.0.half", ne: [4, 2], type: 1, data: f16Bytes),
                SyntheticTensor(name: "token_embd.weight", ne: [32, 2], type: 8, data: q8Bytes),
            ],
            alignment: alignment ?? 32)
    }

    func roundTrip(_ spec: SyntheticGGUF, version: Int, alignment: Int) throws {
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = spec
        let path = dir + "/tiny.gguf"
        try writeFile(spec.serialise(), path)
        let file = try GGUFFile(path: path)
        #expect(file.version == version)
        #expect(file.alignment == alignment)
        #expect(file.dataOffset == spec.dataOffset)
        #expect(file.dataOffset % alignment == 0)
        #expect(file.architecture == "llama")
        let expected = Dictionary(uniqueKeysWithValues: spec.metadata)
        #expect(file.metadata == expected)
        #expect(file.metadata["test.strings"]?.stringArray == ["a", "", "Ġthe", "ü"])
        #expect(file.metadata["test.ints"]?.intArray == [1, -2, 3])
        #expect(file.metadata["test.floats"]?.floatArray == [0.5, -0.25])
        #expect(file.metadata["test.u64"]?.int == nil)  // 1.8e19 does not fit an Int
        #expect(file.metadata["test.i8"]?.int == -100)
        #expect(file.metadata["test.f64"]?.double == 3.141592653589793)
        #expect(file.metadata["llama.block_count"]?.double == 2)
        #expect(file.metadata["test.strings"]?.intArray == nil)
        #expect(file.metadata["test.bool.true"]?.bool == true)
        #expect(file.tensorNames == ["blk.0.half", "blk.0.weight", "token_embd.weight"])
        #expect(file.tensorNamesInFileOrder == ["blk.0.weight", "blk.0.half", "token_embd.weight"])
        #expect(try file.info("blk.0.weight") == TensorInfo(name: "blk.0.weight", shape: [3, 5], type: "F32", byteCount: 60))
        #expect(try file.info("blk.0.half") == TensorInfo(name: "blk.0.half", shape: [2, 4], type: "F16", byteCount: 16))
        #expect(try file.info("token_embd.weight") == TensorInfo(name: "token_embd.weight", shape: [2, 32], type: "Q8_0", byteCount: 68))
        #expect(try file.ggmlType("token_embd.weight") == .Q8_0)
        expectBits(try file.float32("blk.0.weight"), Self.f32Values)
        expectBits(try file.float32("blk.0.half"), Self.f16Values)
        expectBits(try file.float32("token_embd.weight"), Self.q8Values)
        #expect(try file.rawBytes("token_embd.weight") == Self.q8Bytes)
        #expect(throws: SheafError.self) { try file.float32("missing") }
        #expect(throws: SheafError.self) { try file.info("missing") }
    }

    @Test func version3RoundTrips() throws { try roundTrip(Self.sample(), version: 3, alignment: 32) }
    @Test func version2RoundTrips() throws { try roundTrip(Self.sample(version: 2), version: 2, alignment: 32) }
    @Test func customAlignmentRoundTrips() throws { try roundTrip(Self.sample(alignment: 64), version: 3, alignment: 64) }

    @Test func emptyFileWithoutTensorsOrPadding() throws {
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var w = LEBytes()
        w.bytes = Array("GGUF".utf8)
        w.append(UInt32(3))
        w.append(UInt64(0))
        w.append(UInt64(0))
        try writeFile(w.bytes, dir + "/empty.gguf")
        let file = try GGUFFile(path: dir + "/empty.gguf")
        #expect(file.tensorNames.isEmpty && file.metadata.isEmpty && file.architecture == nil)
    }

    @Test func kQuantTensorInAFile() throws {
        // A [2, 256] Q6_K tensor: both rows decode like GGMLQuant on the same bytes.
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = SplitMix64(seed: 7)
        var bytes = (0..<420).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        bytes[208] = 0x00; bytes[209] = 0x2C  // keep d finite: 0.0625
        bytes[418] = 0x00; bytes[419] = 0x3C
        var spec = SyntheticGGUF(tensors: [SyntheticTensor(name: "w", ne: [256, 2], type: 14, data: bytes)])
        try writeFile(spec.serialise(), dir + "/k.gguf")
        let file = try GGUFFile(path: dir + "/k.gguf")
        #expect(try file.info("w").shape == [2, 256])
        expectBits(try file.float32("w"), try GGMLQuant.dequantize(.Q6_K, bytes, count: 512))
    }
}

// MARK: - Llama Q/K permutation and SHA-256

@Suite struct GGUFSupportTests {
    @Test func unpermuteSmallExample() throws {
        // 2 heads of head_dim 4, one column: GGUF rows per head are (i0 j0, i0 j1, i1 j0, i1 j1);
        // HF rows are (j0 i0, j0 i1, j1 i0, j1 i1). So GGUF [0,1,2,3 | 4,5,6,7] → HF [0,2,1,3 | 4,6,5,7].
        let gguf: [Float] = [0, 1, 2, 3, 4, 5, 6, 7]
        #expect(try LlamaPermutation.unpermute(gguf, shape: [8], heads: 2) == [0, 2, 1, 3, 4, 6, 5, 7])
        // With two columns each row moves whole: row r holds (10r, 10r + 1).
        func twoColumns(_ order: [Int]) -> [Float] { order.flatMap { r -> [Float] in [Float(10 * r), Float(10 * r + 1)] } }
        let hf = try LlamaPermutation.unpermute(twoColumns(Array(0..<8)), shape: [8, 2], heads: 2)
        #expect(hf == twoColumns([0, 2, 1, 3, 4, 6, 5, 7]))
        // One head of head_dim 8: interleaved pairs (0,1)(2,3)(4,5)(6,7) become halves [0,2,4,6 | 1,3,5,7].
        #expect(try LlamaPermutation.unpermute((0..<8).map(Float.init), shape: [8, 1], heads: 1) == [0, 2, 4, 6, 1, 3, 5, 7])
    }

    @Test func permuteInvertsUnpermute() throws {
        var rng = SplitMix64(seed: 3)
        for (heads, headDim, dIn) in [(9, 64, 7), (3, 64, 5), (1, 2, 1), (4, 6, 3)] {
            let shape = [heads * headDim, dIn]
            let w = (0..<shape[0] * dIn).map { _ in rng.nextSignedUnitFloat() }
            let hf = try LlamaPermutation.unpermute(w, shape: shape, heads: heads)
            #expect(hf != w || headDim == 2)
            #expect(try LlamaPermutation.permute(hf, shape: shape, heads: heads) == w)
            #expect(try LlamaPermutation.unpermute(LlamaPermutation.permute(w, shape: shape, heads: heads), shape: shape, heads: heads) == w)
        }
    }

    @Test func permutationRejectsBadShapes() {
        #expect(throws: SheafError.self) { try LlamaPermutation.unpermute([Float](repeating: 0, count: 6), shape: [6], heads: 2) }
        #expect(throws: SheafError.self) { try LlamaPermutation.unpermute([Float](repeating: 0, count: 7), shape: [8], heads: 2) }
        #expect(throws: SheafError.self) { try LlamaPermutation.permute([], shape: [], heads: 1) }
        #expect(throws: SheafError.self) { try LlamaPermutation.permute([0, 0], shape: [2], heads: 0) }
    }

    @Test func sha256KnownVectors() {
        // FIPS 180-2 examples, plus lengths around the 55/56/64-byte padding boundaries.
        #expect(SHA256.hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hex([UInt8](repeating: 0x61, count: 1_000_000)) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // Streaming in uneven pieces gives the one-shot digest.
        let message = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var h = SHA256()
        var start = 0
        for piece in [1, 54, 9, 64, 0, 127, 745] {
            message[start..<start + piece].withUnsafeBytes { h.update($0) }
            start += piece
        }
        #expect(h.finalize() == SHA256().finalizeOf(message))
    }
}

extension SHA256 {
    fileprivate func finalizeOf(_ bytes: [UInt8]) -> [UInt8] {
        var h = self
        bytes.withUnsafeBytes { h.update($0) }
        return h.finalize()
    }
}

// MARK: - (c) Bad input: one clear error, never a crash

@Suite struct GGUFBadInputTests {
    /// Writes `bytes`, opens and reads everything, and requires a one-line `SheafError` that names
    /// the file and contains each of `mentions`.
    func expectFailure(_ bytes: [UInt8], _ mentions: String..., sourceLocation: SourceLocation = #_sourceLocation) throws {
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/bad.gguf"
        guard let error = try loadEverything(bytes, at: path) else {
            Issue.record("expected an error mentioning \(mentions)", sourceLocation: sourceLocation)
            return
        }
        let line = error.description
        #expect(line.hasPrefix(path), "\(line)", sourceLocation: sourceLocation)
        #expect(!line.contains("\n"), "\(line)", sourceLocation: sourceLocation)
        for m in mentions { #expect(line.contains(m), "'\(m)' not in: \(line)", sourceLocation: sourceLocation) }
    }

    func header(version: UInt32 = 3, tensors: UInt64 = 0, kvs: UInt64 = 0) -> LEBytes {
        var w = LEBytes()
        w.bytes = Array("GGUF".utf8)
        w.append(version)
        w.append(tensors)
        w.append(kvs)
        return w
    }

    func tensor(_ name: String = "t", ne: [UInt64] = [32], type: UInt32 = 0, offset: UInt64? = nil) -> SyntheticTensor {
        let count = ne.reduce(1, &*)
        return SyntheticTensor(name: name, ne: ne, type: type, data: [UInt8](repeating: 0, count: Int(min(count, 1 << 12)) * 4), offset: offset)
    }

    @Test func wrongMagicAndVersions() throws {
        var spec = GGUFFileTests.sample()
        spec.magic = Array("GGML".utf8)
        try expectFailure(spec.serialise(), "magic", "GGML", "expected \"GGUF\"")
        try expectFailure(Array("{\"__metadata__\": {}}".utf8), "magic")
        try expectFailure(header(version: 1).bytes, "version 1", "expected version 2 or 3")
        try expectFailure(header(version: 4).bytes, "version 4")
        try expectFailure(header(version: 0x0300_0000).bytes, "big-endian")
        try expectFailure([], "truncated")
        try expectFailure(Array("GGU".utf8), "truncated", "magic")
    }

    @Test func truncatedAtEveryByte() throws {
        var spec = GGUFFileTests.sample()
        let full = spec.serialise()
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try loadEverything(full, at: dir + "/full.gguf") == nil)
        var failures = 0
        for length in 0..<full.count {
            // Every prefix is missing either header bytes or the end of the last tensor.
            if let error = try loadEverything(Array(full[..<length]), at: dir + "/cut.gguf") {
                failures += 1
                #expect(error.description.contains("truncated"), "\(length): \(error)")
            } else {
                Issue.record("prefix of \(length) of \(full.count) bytes opened without error")
            }
        }
        #expect(failures == full.count)
    }

    @Test func absurdCountsAndLengths() throws {
        try expectFailure(header(tensors: 1 << 40).bytes, "tensor count 1099511627776 is impossible")
        try expectFailure(header(tensors: .max).bytes, "tensor count")
        try expectFailure(header(kvs: 1 << 62).bytes, "metadata count")
        // A key length of 2^62.
        var w = header(kvs: 1)
        w.append(UInt64(1) << 62)
        w.bytes += [UInt8](repeating: 0x61, count: 16)
        try expectFailure(w.bytes, "metadata entry 0", "past the end")
        // A string value of length 2^64 − 1.
        w = header(kvs: 1)
        w.string("k")
        w.append(UInt32(8))
        w.append(UInt64.max)
        try expectFailure(w.bytes, "metadata key 'k'", "past the end")
        // An array of 2^50 strings in a few bytes.
        w = header(kvs: 1)
        w.string("tokenizer.ggml.tokens")
        w.append(UInt32(9))
        w.append(UInt32(8))
        w.append(UInt64(1) << 50)
        w.bytes += [UInt8](repeating: 0, count: 64)
        try expectFailure(w.bytes, "tokenizer.ggml.tokens", "array of 1125899906842624 string cannot fit")
        // Arrays nested 100 deep.
        w = header(kvs: 1)
        w.string("deep")
        w.append(UInt32(9))
        for _ in 0..<100 {
            w.append(UInt32(9))
            w.append(UInt64(1))
        }
        try expectFailure(w.bytes, "deep", "nested deeper")
    }

    @Test func badMetadataValues() throws {
        func one(_ key: String, type: UInt32, payload: [UInt8]) -> [UInt8] {
            var w = header(kvs: 1)
            w.string(key)
            w.append(type)
            return w.bytes + payload
        }
        try expectFailure(one("k", type: 13, payload: [0, 0, 0, 0]), "'k'", "unknown value type id 13")
        try expectFailure(one("k", type: 7, payload: [2]), "'k'", "bool byte is 2")
        try expectFailure(one("k", type: 9, payload: [20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "'k'", "unknown array element type id 20")
        var spec = SyntheticGGUF(metadata: [("a", .uint8(1)), ("a", .uint8(2))])
        try expectFailure(spec.serialise(), "'a'", "duplicate key")
        for bad: GGUFValue in [.uint32(3), .uint32(0), .string("32"), .int64(-32)] {
            spec = SyntheticGGUF(metadata: [("general.alignment", bad)])
            try expectFailure(spec.serialise(), "general.alignment", "power of two")
        }
    }

    @Test func badTensorInfos() throws {
        var spec = SyntheticGGUF(tensors: [tensor(ne: [2, 2, 2, 2, 2])])
        try expectFailure(spec.serialise(), "tensor 't'", "n_dims is 5, expected at most 4")
        spec = SyntheticGGUF(tensors: [tensor(type: 99)])
        try expectFailure(spec.serialise(), "tensor 't'", "unknown ggml type id 99")
        spec = SyntheticGGUF(tensors: [tensor(type: 4)])  // the retired Q4_2
        try expectFailure(spec.serialise(), "unknown ggml type id 4")
        spec = SyntheticGGUF(tensors: [tensor(offset: 1 << 20)])
        try expectFailure(spec.serialise(), "tensor 't'", "data offset 1048576", "beyond")
        spec = SyntheticGGUF(tensors: [tensor(offset: UInt64.max - 31)])
        try expectFailure(spec.serialise(), "tensor 't'", "beyond")
        spec = SyntheticGGUF(tensors: [tensor(offset: 4)])
        try expectFailure(spec.serialise(), "tensor 't'", "not a multiple of the alignment 32")
        spec = SyntheticGGUF(tensors: [tensor("a"), tensor("b", offset: 64)])  // a covers 0..<128
        try expectFailure(spec.serialise(), "tensors 'a'", "'b'", "overlap")
        spec = SyntheticGGUF(tensors: [tensor("a"), tensor("a")])
        try expectFailure(spec.serialise(), "tensor 'a'", "duplicate tensor name")
        // Shape/size: a Q8_0 row of 33 elements; an element count that overflows; a dimension ≥ 2^63.
        spec = SyntheticGGUF(tensors: [tensor(ne: [33, 2], type: 8)])
        try expectFailure(spec.serialise(), "tensor 't'", "Q8_0", "not a multiple of the 32-element block")
        spec = SyntheticGGUF(tensors: [tensor(ne: [1 << 32, 1 << 32, 1 << 32])])
        try expectFailure(spec.serialise(), "tensor 't'", "overflows")
        spec = SyntheticGGUF(tensors: [tensor(ne: [1 << 63])])
        try expectFailure(spec.serialise(), "tensor 't'", "ne[0]")
        // A tensor info cut short, and a lying element count for real bytes.
        spec = SyntheticGGUF(tensors: [tensor(ne: [1 << 40])])
        try expectFailure(spec.serialise(), "tensor 't'", "beyond")
    }

    @Test func unsupportedTypeOpensButCannotBeDequantised() throws {
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticGGUF(tensors: [SyntheticTensor(name: "blk.3.ffn_up.weight", ne: [256, 1], type: 10, data: [UInt8](repeating: 0, count: 84))])
        try writeFile(spec.serialise(), dir + "/q2.gguf")
        let file = try GGUFFile(path: dir + "/q2.gguf")
        #expect(try file.info("blk.3.ffn_up.weight") == TensorInfo(name: "blk.3.ffn_up.weight", shape: [1, 256], type: "Q2_K", byteCount: 84))
        do {
            _ = try file.float32("blk.3.ffn_up.weight")
            Issue.record("Q2_K dequantised")
        } catch {
            #expect(error.description.contains("blk.3.ffn_up.weight") && error.description.contains("Q2_K"), "\(error)")
        }
    }

    @Test func missingOrNonRegularFiles() throws {
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: SheafError.self) { try GGUFFile(path: dir + "/nope.gguf") }
        #expect(throws: SheafError.self) { try GGUFFile(path: dir) }
    }
}

// MARK: - (d) Seeded mutation fuzzing

@Suite struct GGUFFuzzTests {
    /// 3000 mutants of the synthetic file (byte overwrites, bit flips, random u64s over counts and
    /// lengths, truncations), mostly in the header: each must load and read every tensor, or
    /// throw a SheafError naming the file. Reaching the end without a crash is the main check.
    @Test func mutatedFilesFailCleanly() throws {
        var spec = GGUFFileTests.sample()
        spec.tensors.append(SyntheticTensor(name: "blk.1.q4k", ne: [256], type: 12, data: [UInt8](repeating: 0x11, count: 144)))
        let original = spec.serialise()
        let header = spec.dataOffset
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/fuzz.gguf"
        var rng = SplitMix64(seed: 0x6767_7566)
        var (loaded, failed) = (0, 0)
        for _ in 0..<3000 {
            var bytes = original
            for _ in 0...(rng.next() % 4) {
                // 85 % of edits land in the header, where the structure is.
                let limit = min(rng.next() % 100 < 85 ? header : bytes.count, bytes.count)
                guard limit > 0 else { continue }
                let at = Int(rng.next() % UInt64(limit))
                switch rng.next() % 5 {
                case 0: bytes[at] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes[at] ^= 1 << UInt8(rng.next() % 8)
                case 2:
                    // A random or extreme u64 over whatever is there (counts, lengths, offsets).
                    let choices: [UInt64] = [rng.next(), .max, 1 << 40, 1 << 62, rng.next() % 4096, 0]
                    let v = choices[Int(rng.next() % 6)]
                    for k in 0..<8 where at + k < bytes.count { bytes[at + k] = UInt8(truncatingIfNeeded: v >> UInt64(8 * k)) }
                case 3: bytes[at] = [0, 1, 0xFF, 4, 8, 9, 12][Int(rng.next() % 7)]
                default: bytes = Array(bytes[..<at])
                }
            }
            if let error = try loadEverything(bytes, at: path) {
                failed += 1
                #expect(error.description.hasPrefix(path) && !error.description.contains("\n"), "\(error)")
            } else {
                loaded += 1
            }
        }
        // Both outcomes occur: the mutations reach the parser's checks, and harmless ones load.
        #expect(loaded > 100 && failed > 1000, "loaded \(loaded), failed \(failed)")
    }
}

// MARK: - (e) The reference model

/// Statistics of the dequantised tensors from scripts/gguf_golden.py (gguf-py 0.19.0, numpy):
/// float64 sum and sum of squares, the first four values, and the sha256 of the float32
/// little-endian bytes in GGUF row order.
struct GGUFGolden {
    var name: String
    var type: String
    var shape: [Int]
    var sum: Double
    var sumOfSquares: Double
    var first: [Float]
    var sha256: String

    static let smolLM2: [GGUFGolden] = [
        GGUFGolden(
            name: "token_embd.weight", type: "Q8_0", shape: [49152, 576], sum: -15353.04449415207, sumOfSquares: 520415.71544763993,
            first: [-0.10654449462890625, 0.032978057861328125, 0.048198699951171875, -0.022830963134765625],
            sha256: "3fd491c8066dd9dc1a2bf6796701526c82817d95c0ecabacdef3013c2b8bbbaa"),
        GGUFGolden(
            name: "blk.0.attn_q.weight", type: "Q4_1", shape: [576, 576], sum: 59.22322082519531, sumOfSquares: 26749.573275085306,
            first: [-0.0963134765625, 0.1573486328125, -0.0963134765625, -0.73046875],
            sha256: "aa74111ad24c3624a20374d2026fd1f50bfe2520252e3c9aef4a666a28593cc8"),
        GGUFGolden(
            name: "blk.0.attn_k.weight", type: "Q4_1", shape: [192, 576], sum: 26.937057495117188, sumOfSquares: 17499.561343912734,
            first: [-0.1552734375, 0.3402099609375, -0.485595703125, -0.3204345703125],
            sha256: "29614b1cceeca5d59dc07bcd5666f4c7a2ec661c1be425905f2d1b9aa7358073"),
        GGUFGolden(
            name: "blk.0.ffn_down.weight", type: "Q4_1", shape: [576, 1536], sum: 150.63577270507812, sumOfSquares: 33220.11995097203,
            first: [-0.330810546875, 0.3460693359375, 0.0753173828125, -0.4661865234375],
            sha256: "0b78b2226f740ed5594510ed990ea6c2846a6a889ab07cf251e4a489df1d75b0"),
        GGUFGolden(
            name: "blk.29.attn_v.weight", type: "Q4_1", shape: [192, 576], sum: -23.565185546875, sumOfSquares: 9188.002153100446,
            first: [0.1417236328125, -0.277587890625, 0.3094482421875, 0.2255859375],
            sha256: "ccd13910de7a7987521feaa22b57227cc1ff00a702bea83b345c238c5800fe27"),
        GGUFGolden(
            name: "output_norm.weight", type: "F32", shape: [576], sum: 1038.33203125, sumOfSquares: 1921.7355499267578,
            first: [1.7578125, 1.8203125, 1.78125, 1.6015625],
            sha256: "3b87f8e27335e67fc08f159cabfd2d18f205d6c5b225a6f978153552bf01d559"),
        GGUFGolden(
            name: "blk.0.attn_norm.weight", type: "F32", shape: [576], sum: 0.6129436492919922, sumOfSquares: 0.9180835409024439,
            first: [0.01397705078125, 0.0238037109375, -0.019775390625, -0.0302734375],
            sha256: "2469079d969a361823be8145fa36e15e4c1b933b5261d669357b3deead825cba"),
    ]
}

@Suite struct GGUFModelTests {
    static var modelPath: String {
        let cache = ProcessInfo.processInfo.environment["SHEAF_CACHE"] ?? (NSHomeDirectory() + "/.cache/sheaf")
        return cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    }

    func openModel() throws -> GGUFFile {
        let path = Self.modelPath
        try #require(FileManager.default.fileExists(atPath: path), "reference model missing at \(path): run scripts/fixtures")
        return try GGUFFile(path: path)
    }

    @Test func smolLM2Metadata() throws {
        let file = try openModel()
        #expect(file.version == 3)
        #expect(file.architecture == "llama")
        #expect(file.alignment == 32)
        #expect(file.dataOffset == 1_785_664)  // gguf-py's data_offset
        #expect(file.metadata.count == 33)  // gguf-py's kv_count
        #expect(file.metadata["llama.block_count"]?.int == 30)
        #expect(file.metadata["llama.embedding_length"]?.int == 576)
        #expect(file.metadata["llama.feed_forward_length"]?.int == 1536)
        #expect(file.metadata["llama.attention.head_count"]?.int == 9)
        #expect(file.metadata["llama.attention.head_count_kv"]?.int == 3)
        #expect(file.metadata["llama.rope.freq_base"]?.double == 100_000)
        #expect(file.metadata["llama.attention.layer_norm_rms_epsilon"] == .float32(1e-5))
        #expect(file.metadata["tokenizer.ggml.pre"]?.string == "smollm")
        #expect(file.metadata["tokenizer.ggml.add_bos_token"]?.bool == false)
        let tokens = try #require(file.metadata["tokenizer.ggml.tokens"]?.stringArray)
        #expect(tokens.count == 49152)
        #expect(tokens.first == "<|endoftext|>" && tokens[1] == "<|im_start|>" && tokens.last == "ectable")
        let merges = try #require(file.metadata["tokenizer.ggml.merges"]?.stringArray)
        #expect(merges.count == 48900)
        #expect(merges.first == "Ġ t" && merges.last == "ect able")
        let tokenTypes = try #require(file.metadata["tokenizer.ggml.token_type"]?.intArray)
        #expect(tokenTypes.count == 49152 && tokenTypes.filter { $0 == 3 }.count == 17 && tokenTypes.filter { $0 == 1 }.count == 49135)

        #expect(file.tensorNames.count == 272)
        var byType: [String: Int] = [:]
        var elements = 0
        for name in file.tensorNames {
            let info = try file.info(name)
            byType[info.type, default: 0] += 1
            elements += info.elementCount
        }
        #expect(byType == ["Q4_1": 210, "F32": 61, "Q8_0": 1])
        #expect(elements == 134_515_008)
        #expect(try file.info("token_embd.weight") == TensorInfo(name: "token_embd.weight", shape: [49152, 576], type: "Q8_0", byteCount: 30_081_024))
        #expect(try file.info("blk.0.attn_k.weight") == TensorInfo(name: "blk.0.attn_k.weight", shape: [192, 576], type: "Q4_1", byteCount: 69120))
        #expect(!file.tensorNames.contains("output.weight"))  // the head is tied to the embedding
    }

    @Test func smolLM2EveryTensorDequantises() throws {
        // All 272 tensors decode to finite values of the advertised count.
        let file = try openModel()
        for name in file.tensorNames {
            let values = try file.float32(name)
            #expect(values.count == (try file.info(name)).elementCount, "\(name)")
            #expect(values.allSatisfy { $0.isFinite }, "\(name)")
        }
    }

    @Test(arguments: GGUFGolden.smolLM2.map(\.name))
    func smolLM2MatchesGGUFPy(_ name: String) throws {
        let file = try openModel()
        let golden = try #require(GGUFGolden.smolLM2.first { $0.name == name })
        let info = try file.info(name)
        #expect(info.shape == golden.shape && info.type == golden.type)
        let values = try file.float32(name)
        #expect(values.count == info.elementCount)
        var (sum, sumOfSquares) = (0.0, 0.0)
        for v in values {
            sum += Double(v)
            sumOfSquares += Double(v) * Double(v)
        }
        // Sums differ from numpy's pairwise summation only in Float64 rounding: each of the two
        // errs by γ_n·Σ|v| ≤ γ_n·√(n·Σv²) (Cauchy–Schwarz), and by γ_{n+1}·Σv² for the squares.
        let n = values.count
        let sumBound = 2 * Roundoff.gamma(n, unit: Roundoff.float64) * (Double(n) * sumOfSquares).squareRoot()
        #expect(abs(sum - golden.sum) <= sumBound, "sum \(sum) vs \(golden.sum)")
        #expect(abs(sumOfSquares - golden.sumOfSquares) <= 2 * Roundoff.gamma(n + 1, unit: Roundoff.float64) * golden.sumOfSquares,
                "sum of squares \(sumOfSquares) vs \(golden.sumOfSquares)")
        #expect(Array(values.prefix(4)) == golden.first)
        let digest = values.withUnsafeBytes { SHA256.hex($0) }  // little-endian host: these are the f32 LE bytes
        #expect(digest == golden.sha256)
    }

    @Test func smolLM2AttentionRowsUnpermute() throws {
        // Un-permuting and permuting back the real Q projection is the identity; un-permuting
        // moves row 1 (head 0, pair 0, second element) to row 32 (head 0, second half).
        let file = try openModel()
        let q = try file.float32("blk.0.attn_q.weight")
        let hf = try LlamaPermutation.unpermute(q, shape: [576, 576], heads: 9)
        #expect(Array(hf[32 * 576..<33 * 576]) == Array(q[576..<2 * 576]))
        #expect(try LlamaPermutation.permute(hf, shape: [576, 576], heads: 9) == q)
    }
}

@Suite struct GGUFLargeMetadataTests {
    /// An array longer than the documented limit is stepped over, not held (24 bytes per element
    /// made a 96.6M-element array cost 2.3 GB); what follows it still parses.
    @Test func largeArraysAreSkipped() throws {
        let dir = try ggufTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = GGUFFile.maxLoadedArrayElements + 1
        var w = LEBytes()
        w.bytes = Array("GGUF".utf8)
        w.append(UInt32(3))
        w.append(UInt64(0))
        w.append(UInt64(3))
        w.string("big")
        w.append(UInt32(9))
        w.append(UInt32(0))
        w.append(UInt64(n))
        w.bytes += [UInt8](repeating: 7, count: n)
        w.string("small")
        w.append(UInt32(9))
        w.append(UInt32(4))
        w.append(UInt64(2))
        w.append(UInt32(5))
        w.append(UInt32(6))
        w.string("general.architecture")
        w.append(UInt32(8))
        w.string("llama")
        while w.bytes.count % 32 != 0 { w.bytes.append(0) }
        try writeFile(w.bytes, dir + "/big.gguf")
        let file = try GGUFFile(path: dir + "/big.gguf")
        #expect(file.metadata["big"] == .skippedArray(elementType: "u8", count: n))
        #expect(file.metadata["small"]?.array?.compactMap(\.int) == [5, 6])
        #expect(file.architecture == "llama")
    }
}
