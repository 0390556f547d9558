import SheafBackend
import SheafCore
import SheafIO

/// Float64 Gram accumulators XᵀX of one decoder layer's distinct linear inputs, on the backend.
/// One Gram per distinct input, not per matrix: q, k and v read the same input, as do gate and up.
public final class LayerGrams: @unchecked Sendable {
    /// The distinct linear inputs of a block (the slot table's `LinearInput`).
    public typealias Input = LinearInput

    let backend: any Backend
    var grams: [Input: MatrixView] = [:]
    /// Rows accumulated into each Gram.
    public private(set) var rows: [Input: Int] = [:]
    /// When set, every input is also kept on the host (tests recompute XᵀX from it).
    public var captured: [Input: [Matrix<Float>]]?

    public init(config: ModelConfig, backend: any Backend, capture: Bool = false) throws(SheafError) {
        self.backend = backend
        for input in Input.allCases {
            let n = input.width(config)
            grams[input] = try backend.zeros(.float64, rows: n, cols: n)
        }
        captured = capture ? [:] : nil
    }

    func accumulate(_ input: Input, _ x: MatrixView) throws(SheafError) {
        guard let g = grams[input] else { return }
        try backend.accumulateGram(x, into: g)
        rows[input, default: 0] += x.rows
        if captured != nil { captured![input, default: []].append(try backend.download(x)) }
    }

    /// The Grams on the host, (n, n) Float64 each.
    public func download() throws(SheafError) -> [Input: Matrix<Double>] {
        var out: [Input: Matrix<Double>] = [:]
        for (input, g) in grams { out[input] = try backend.download(g) }
        return out
    }
}

/// Calibration: runs the calibration windows through the model one decoder layer at a time,
/// keeping the hidden states of every window on the backend and only the current layer's
/// weights, and accumulates each layer's input Grams on the way.
public enum Calibration {
    /// Per layer, the Grams of its distinct linear inputs, summed over all windows.
    /// `onLayer` receives each layer's Grams as soon as they are complete (a compression method
    /// can factor that layer and drop them); the returned array holds them all when `keep`
    /// (≈ 800 MB for SmolLM2-135M), else is empty. `layer` supplies decoder block i (default:
    /// the dense weights of `files`): give it compressed blocks to collect the Grams of the
    /// inputs a partly compressed model sees (the coefficient refit of Basis Sharing).
    public static func collectGrams(
        files: ModelFiles, backend: any Backend, windows: [[Int32]], capture: Bool = false, keep: Bool = true,
        layer makeLayer: ((Int) throws(SheafError) -> DecoderLayer)? = nil,
        progress: (Int, Int) -> Void = { _, _ in }, onLayer: (Int, LayerGrams) throws(SheafError) -> Void = { _, _ in }
    ) throws(SheafError) -> [[LayerGrams.Input: Matrix<Double>]] {
        guard let length = windows.first?.count, length > 0, windows.allSatisfy({ $0.count == length }) else {
            throw .invalidArgument(op: "calibration", detail: "needs at least one window, all of the same non-zero length")
        }
        let c = files.config, loader = WeightLoader(files: files, backend: backend)
        let perBatch = windowsPerBatch(length: length, count: windows.count)
        // One (windows·length, hidden) residual stream per batch; the host embedding is freed on return.
        func embedBatches() throws(SheafError) -> [MatrixView] {
            let embedding = try loader.embedding()
            return try stride(from: 0, to: windows.count, by: perBatch).map { (start) throws(SheafError) in
                try embedWindows(Array(windows[start..<min(start + perBatch, windows.count)]), embedding: embedding, loader: loader)
            }
        }
        let hidden = try embedBatches()
        let scratch = try LlamaModel.Activations(backend, tokens: perBatch * length, c)
        var result: [[LayerGrams.Input: Matrix<Double>]] = []
        for i in 0..<c.layerCount {
            // Released when the next layer replaces it.
            let layer: DecoderLayer
            if let makeLayer { layer = try makeLayer(i) } else { layer = try loader.layer(i) }
            let grams = try LayerGrams(config: c, backend: backend, capture: capture)
            for h in hidden {
                try LlamaModel.block(
                    layer, try scratch.reused(for: h), config: c, backend: backend, position: 0, grams: grams, sequence: length)
            }
            try onLayer(i, grams)
            if keep { result.append(try grams.download()) }
            progress(i + 1, c.layerCount)
        }
        return result
    }

    /// Windows run through each layer together: up to 2048 rows per batch. Each Gram update then
    /// adds a chunk product of 2048 rows into the Float64 Gram (an add-and-mirror of d² values
    /// per call, ≈ 2·8·d² bytes, independent of the rows), four times less often than per
    /// 512-token window; attention and RoPE still run per window.
    static func windowsPerBatch(length: Int, count: Int) -> Int { max(1, min(count, 2048 / length)) }

    /// The embedding rows of `windows`, one after another, as one (windows·length, hidden)
    /// matrix on the backend.
    static func embedWindows(_ windows: [[Int32]], embedding: [Float], loader: WeightLoader) throws(SheafError) -> MatrixView {
        let c = loader.files.config
        let rowsTotal = windows.reduce(0) { $0 + $1.count }
        var rows = [Float](repeating: 0, count: rowsTotal * c.hiddenSize)
        var r = 0
        for w in windows {
            for t in w {
                guard t >= 0, Int(t) < c.vocabularySize else {
                    throw .invalidArgument(op: "calibration", detail: "token id \(t) outside the vocabulary of \(c.vocabularySize)")
                }
                for j in 0..<c.hiddenSize { rows[r * c.hiddenSize + j] = embedding[Int(t) * c.hiddenSize + j] }
                r += 1
            }
        }
        return try MatrixView(loader.backend.upload(rows, label: "calibration embeddings"), rows: rowsTotal, cols: c.hiddenSize)
    }
}
