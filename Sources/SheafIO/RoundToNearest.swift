import Foundation
import SheafCore

/// Round-to-nearest quantisation of a weight matrix W (dOut, dIn), asymmetric per group: each
/// output row is cut into groups of `group` consecutive inputs (the last may be shorter), and
/// each group stores a 16-bit minimum m and step s = (max − min)/(2^bits − 1) with codes
/// q = round((w − m)/s) ∈ [0, 2^bits − 1], so ŵ = m + q·s. The method (rtn), its stored kind
/// ("quantized"), quantised tensors of any kind (`CompressedManifest.QuantizedTensor`, read by
/// `ModelFiles`) and the backends' `dequantizeRows` share this codec, so what is written is
/// exactly what is read back.
public enum RoundToNearest {
    /// Codes packed little-endian per row: code i of a row occupies bits i·bits ..< (i+1)·bits of
    /// the row's bytes (bit b of the stream is bit b % 8 of byte b / 8).
    public static func bytesPerRow(dIn: Int, bits: Int) -> Int { (dIn * bits + 7) / 8 }
    public static func groups(dIn: Int, group: Int) -> Int { (dIn - 1) / group + 1 }

    /// Average stored bits per weight: the codes plus a 16-bit minimum and step per group.
    public static func averageBits(dOut: Int, dIn: Int, bits: Int, group: Int) -> Double {
        Double(dOut * (bytesPerRow(dIn: dIn, bits: bits) * 8 + groups(dIn: dIn, group: group) * 32)) / Double(dOut * dIn)
    }

    public struct Quantized: Sendable {
        /// (dOut, bytesPerRow), values 0...255.
        public var codes: Matrix<Float>
        /// (dOut, groups) each, already rounded to Float16.
        public var minima: Matrix<Float>
        public var steps: Matrix<Float>
    }

    public static func quantize(_ w: Matrix<Float>, bits: Int, group: Int) -> Quantized {
        let (dOut, dIn) = (w.rows, w.cols), g = groups(dIn: dIn, group: group), rowBytes = bytesPerRow(dIn: dIn, bits: bits)
        let top = Float((1 << bits) - 1)
        var codes = Matrix<Float>.zeros(rows: dOut, cols: rowBytes)
        var minima = Matrix<Float>.zeros(rows: dOut, cols: g), steps = Matrix<Float>.zeros(rows: dOut, cols: g)
        var packed = [UInt8](repeating: 0, count: rowBytes)
        for o in 0..<dOut {
            for b in 0..<rowBytes { packed[b] = 0 }
            for j in 0..<g {
                let range = (j * group)..<min(dIn, (j + 1) * group)
                var lo = Float.infinity, hi = -Float.infinity
                for i in range { lo = min(lo, w[o, i]); hi = max(hi, w[o, i]) }
                // The stored (Float16) minimum and step are the ones the codes are rounded against.
                let m = HalfFloat.f16ToFloat(HalfFloat.floatToF16(lo))
                var s = HalfFloat.f16ToFloat(HalfFloat.floatToF16((hi - lo) / top))
                if s > 0, m + top * s < hi { s = HalfFloat.f16ToFloat(HalfFloat.floatToF16((hi - m) / top)) }
                minima[o, j] = m
                steps[o, j] = s
                for i in range {
                    let q = s > 0 ? min(top, max(0, ((w[o, i] - m) / s).rounded())) : 0
                    let bit = i * bits
                    let code = UInt32(q) << UInt32(bit % 8)
                    packed[bit / 8] |= UInt8(truncatingIfNeeded: code)
                    if (bit % 8) + bits > 8 { packed[bit / 8 + 1] |= UInt8(truncatingIfNeeded: code >> 8) }
                }
            }
            for b in 0..<rowBytes { codes[o, b] = Float(packed[b]) }
        }
        return Quantized(codes: codes, minima: minima, steps: steps)
    }

    /// ŵ = m + q·s, (dOut, dIn) row-major.
    public static func dequantize(codes: [Float], minima: [Float], steps: [Float], dOut: Int, dIn: Int, bits: Int, group: Int) -> [Float] {
        let g = groups(dIn: dIn, group: group), rowBytes = bytesPerRow(dIn: dIn, bits: bits)
        let mask = UInt32((1 << bits) - 1)
        var out = [Float](repeating: 0, count: dOut * dIn)
        for o in 0..<dOut {
            for i in 0..<dIn {
                let bit = i * bits, byte = o * rowBytes + bit / 8
                var word = UInt32(codes[byte])
                if (bit % 8) + bits > 8 { word |= UInt32(codes[byte + 1]) << 8 }
                let q = (word >> UInt32(bit % 8)) & mask
                let j = o * g + i / group
                out[o * dIn + i] = minima[j] + Float(q) * steps[j]
            }
        }
        return out
    }
}

extension CompressedManifest.QuantizedTensor {
    /// Tensor `name`, (rows, cols) `values`, quantised with `bits` per code in groups of `group`
    /// (a row shorter than `group` is one group; a longer one not a multiple of it ends in a
    /// shorter group): its table entry, its three parts to write (codes U8, minima and steps
    /// F16, named by `parts(of:)`) and the values a reader gets back from them.
    public static func encode(_ name: String, _ values: Matrix<Float>, bits requestedBits: Int, group requestedGroup: Int) throws(SheafError)
        -> (entry: Self, parts: [TensorToWrite], dequantized: [Float])
    {
        let (bits, group) = (requestedBits, min(requestedGroup, values.cols))
        guard (1...8).contains(bits), group >= 1 else {
            throw .invalidArgument(op: "quantize", detail: "tensor '\(name)' (\(values.rows), \(values.cols)): \(bits) bits in groups of \(group)")
        }
        if let bad = values.values.firstIndex(where: { !$0.isFinite }) {
            throw .nonFinite(op: "quantize", what: "tensor '\(name)' at element \(bad) (\(values.values[bad]))")
        }
        let q = RoundToNearest.quantize(values, bits: bits, group: group)
        let names = parts(of: name)
        let entry = Self(shape: [values.rows, values.cols], bits: bits, group: group, codes: names.codes, minima: names.minima, steps: names.steps)
        let written = [
            try TensorToWrite(name: names.codes, shape: [q.codes.rows, q.codes.cols], values: q.codes.values, as: .U8),
            try TensorToWrite(name: names.minima, shape: [q.minima.rows, q.minima.cols], values: q.minima.values, as: .F16),
            try TensorToWrite(name: names.steps, shape: [q.steps.rows, q.steps.cols], values: q.steps.values, as: .F16),
        ]
        let back = RoundToNearest.dequantize(
            codes: q.codes.values, minima: q.minima.values, steps: q.steps.values, dOut: values.rows, dIn: values.cols, bits: bits, group: group)
        return (entry, written, back)
    }
}

extension CompressedManifest.QuantizedTensor {
    /// The table entry tensor `name` of `shape` (rows, cols) gets when quantised with `bits` in
    /// groups of `group` (`encode`'s), known before any value is read.
    public static func entry(_ name: String, shape: [Int], bits: Int, group: Int) -> Self {
        let names = parts(of: name)
        return Self(shape: shape, bits: bits, group: min(group, shape[1]), codes: names.codes, minima: names.minima, steps: names.steps)
    }

    /// Tensor `name` of `shape`, its values read by `values()` only when the writer reaches its
    /// first part, quantised once for its three parts (held until the last is written: the
    /// parts' names sort together, so the writer takes them one after another).
    public static func deferredParts(
        _ name: String, shape: [Int], bits: Int, group: Int, values: @escaping @Sendable () throws(SheafError) -> [Float]
    ) -> (entry: Self, parts: [TensorToWrite]) {
        let entry = entry(name, shape: shape, bits: bits, group: group)
        let (rows, cols) = (shape[0], shape[1])
        let groups = RoundToNearest.groups(dIn: cols, group: entry.group)
        let once = EncodedOnce {
            () throws(SheafError) in
            try encode(name, try Matrix(rows: rows, cols: cols, values: try values()), bits: bits, group: group).parts
        }
        let layout: [(String, [Int], SafetensorsDType)] = [
            (entry.codes, [rows, RoundToNearest.bytesPerRow(dIn: cols, bits: bits)], .U8), (entry.minima, [rows, groups], .F16),
            (entry.steps, [rows, groups], .F16),
        ]
        let parts = layout.enumerated().map { (i, part) in
            TensorToWrite(name: part.0, shape: part.1, dtype: part.2) { () throws(SheafError) in try once.part(i) }
        }
        return (entry, parts)
    }
}

/// One quantisation shared by the three parts of a tensor being written, dropped once each part
/// has taken its bytes.
private final class EncodedOnce: @unchecked Sendable {
    private let make: @Sendable () throws(SheafError) -> [TensorToWrite]
    private var parts: [TensorToWrite]?
    private var taken = 0
    private let lock = NSLock()

    init(_ make: @escaping @Sendable () throws(SheafError) -> [TensorToWrite]) { self.make = make }

    func part(_ i: Int) throws(SheafError) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        let made: [TensorToWrite]
        if let parts { made = parts } else { made = try make() }
        taken += 1
        parts = taken < made.count ? made : nil
        return try made[i].storedBytes()
    }
}
