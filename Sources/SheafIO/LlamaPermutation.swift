import SheafCore

/// The row order of llama Q and K projections in GGUF files versus HuggingFace checkpoints.
///
/// llama.cpp applies RoPE to adjacent pairs (x[2i], x[2i+1]); HuggingFace's `rotate_half` pairs
/// x[i] with x[i + hd/2]. llama.cpp's converter therefore permutes each head's rows: viewing
/// the rows of one projection (dOut = heads · hd) as [heads, 2, hd/2], it swaps the last two
/// axes to [heads, hd/2, 2]. So within a head, HF row j·(hd/2) + i is GGUF row 2i + j.
/// For K, `heads` is the key/value head count. Shapes: `shape` is [dOut] or [dOut, dIn...];
/// every trailing dimension moves with its row.
public enum LlamaPermutation {
    /// GGUF row order to HuggingFace row order (interleaved pairs become two halves).
    public static func unpermute(_ rows: [Float], shape: [Int], heads: Int) throws(SheafError) -> [Float] {
        try reorder(rows, shape: shape, heads: heads, op: "llama unpermute", toHF: true)
    }

    /// HuggingFace row order to GGUF row order (the converter's permutation; inverse of `unpermute`).
    public static func permute(_ rows: [Float], shape: [Int], heads: Int) throws(SheafError) -> [Float] {
        try reorder(rows, shape: shape, heads: heads, op: "llama permute", toHF: false)
    }

    /// For each HuggingFace row of a (dOut, …) Q or K projection, the GGUF row it comes from:
    /// `unpermute` as an index map, for data that moves by rows without being floats (codes).
    public static func ggufRow(ofHF dOut: Int, heads: Int) throws(SheafError) -> [Int] {
        let order = try reorder((0..<dOut).map { Float($0) }, shape: [dOut], heads: heads, op: "llama unpermute", toHF: true)
        return order.map { Int($0) }
    }

    static func reorder(_ rows: [Float], shape: [Int], heads: Int, op: String, toHF: Bool) throws(SheafError) -> [Float] {
        guard let dOut = shape.first, heads > 0, dOut > 0, dOut % (2 * heads) == 0 else {
            throw .shapeMismatch(op: op, detail: "shape \(shape) with \(heads) heads: expected dOut divisible by 2 · heads")
        }
        let rowLength = shape.dropFirst().reduce(1, *)
        guard rows.count == dOut * rowLength else {
            throw .shapeMismatch(op: op, detail: "\(rows.count) values for shape \(shape)")
        }
        let headDim = dOut / heads
        let half = headDim / 2
        var out = [Float](repeating: 0, count: rows.count)
        rows.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for h in 0..<heads {
                    for i in 0..<half {
                        for j in 0..<2 {
                            let gguf = h * headDim + 2 * i + j
                            let hf = h * headDim + j * half + i
                            let (from, to) = toHF ? (gguf, hf) : (hf, gguf)
                            for c in 0..<rowLength { dst[to * rowLength + c] = src[from * rowLength + c] }
                        }
                    }
                }
            }
        }
        return out
    }
}
