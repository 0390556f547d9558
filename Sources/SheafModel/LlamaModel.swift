import Foundation
import SheafBackend
import SheafCore
import SheafIO

/// One decoder block's weights on the backend.
public final class DecoderLayer: @unchecked Sendable {
    public var q, k, v, o, gate, up, down: any LinearLayer
    /// RMSNorm weights, (1, hidden).
    let inputNorm, postAttentionNorm: MatrixView

    public init(
        q: any LinearLayer, k: any LinearLayer, v: any LinearLayer, o: any LinearLayer, gate: any LinearLayer,
        up: any LinearLayer, down: any LinearLayer, inputNorm: MatrixView, postAttentionNorm: MatrixView
    ) {
        (self.q, self.k, self.v, self.o) = (q, k, v, o)
        (self.gate, self.up, self.down) = (gate, up, down)
        self.inputNorm = inputNorm
        self.postAttentionNorm = postAttentionNorm
    }

    /// The linear layer of one matrix type (a probe swaps one and puts it back).
    public subscript(type: MatrixType) -> any LinearLayer {
        get {
            switch type {
            case .q: q
            case .k: k
            case .v: v
            case .o: o
            case .gate: gate
            case .up: up
            case .down: down
            }
        }
        set {
            switch type {
            case .q: q = newValue
            case .k: k = newValue
            case .v: v = newValue
            case .o: o = newValue
            case .gate: gate = newValue
            case .up: up = newValue
            case .down: down = newValue
            }
        }
    }
}

/// Where a model's token embedding E (vocabulary, hidden) lives.
enum TokenEmbedding {
    /// Untied: E on the host, rows copied per window.
    case host([Float])
    /// Tied: the output head's own Eᵀ (hidden, vocabulary) on the backend in its stored form,
    /// and the (hidden, hidden) identity that transposes gathered columns.
    case transposedHead(ResidentMatrix, identity: MatrixView)

    /// `eT` (hidden, vocabulary) and the identity of its row count, uploaded to `backend`.
    static func transposedHead(_ eT: ResidentMatrix, on backend: any Backend) throws(SheafError) -> TokenEmbedding {
        let d = eT.rows
        var values = [Float](repeating: 0, count: d * d)
        for i in 0..<d { values[i * d + i] = 1 }
        return .transposedHead(eT, identity: try MatrixView(backend.upload(values, label: "identity"), rows: d, cols: d))
    }
}

/// The Llama-family decoder (llama, mistral, qwen2, SmolLM): token embedding, per layer
/// RMSNorm → grouped-query attention with RoPE → residual, RMSNorm → SwiGLU MLP → residual,
/// final RMSNorm and a tied or untied output head. Float32 activations on any backend.
public final class LlamaModel: @unchecked Sendable {
    public let config: ModelConfig
    public let backend: any Backend
    /// The token embedding E (vocabulary, hidden), held once.
    let embedding: TokenEmbedding
    public var layers: [DecoderLayer]
    let finalNorm: MatrixView
    /// Output head W (vocabulary, hidden), tied to the embedding or not.
    let head: any LinearLayer
    /// When set, the forward pass synchronises the backend after each step and adds its wall
    /// time here (costs a little throughput on OpenCL; nothing when nil).
    public var stepTimes: StepTimes?

    /// Loads every weight from `files` onto `backend`, checking each for NaN/Inf by name.
    public init(files: ModelFiles, backend: any Backend, progress: (String) -> Void = { _ in }) throws(SheafError) {
        let loader = WeightLoader(files: files, backend: backend)
        config = files.config
        self.backend = backend
        // A tied head is E itself: the head's Eᵀ on the backend is the only copy, and rows are
        // gathered from it. An untied model keeps E on the host, its only copy there too. The
        // head is loaded first, while the transient copies of its conversion (E as read, then
        // transposed) sit beside nothing else.
        let tiedHead: DenseLinear?
        if config.tiedEmbeddings {
            let head = try loader.outputHead(tied: true)
            embedding = try .transposedHead(head.weightT, on: backend)
            tiedHead = head
        } else {
            embedding = .host(try loader.embedding())
            tiedHead = nil
        }
        var layers: [DecoderLayer] = []
        for i in 0..<config.layerCount {
            layers.append(try loader.layer(i))
            progress("loaded layer \(i + 1)/\(config.layerCount)")
        }
        self.layers = layers
        finalNorm = try loader.vector("model.norm.weight", config.hiddenSize)
        if let tiedHead { head = tiedHead } else { head = try loader.outputHead(tied: false) }
    }

    /// Scratch activations for one sequence of `tokens`.
    struct Activations {
        let hidden, normed, q, k, v, attention, projected, gate, up: MatrixView

        /// `hidden`: the residual stream to run on (kept by the caller), else a new zero one.
        init(_ be: any Backend, tokens t: Int, _ c: ModelConfig, hidden: MatrixView? = nil) throws(SheafError) {
            if let hidden { self.hidden = hidden } else { self.hidden = try be.zeros(.float32, rows: t, cols: c.hiddenSize) }
            normed = try be.zeros(.float32, rows: t, cols: c.hiddenSize)
            q = try be.zeros(.float32, rows: t, cols: c.headCount * c.headDim)
            k = try be.zeros(.float32, rows: t, cols: c.kvHeadCount * c.headDim)
            v = try be.zeros(.float32, rows: t, cols: c.kvHeadCount * c.headDim)
            attention = try be.zeros(.float32, rows: t, cols: c.headCount * c.headDim)
            projected = try be.zeros(.float32, rows: t, cols: c.hiddenSize)
            gate = try be.zeros(.float32, rows: t, cols: c.intermediateSize)
            up = try be.zeros(.float32, rows: t, cols: c.intermediateSize)
        }

        private init(hidden: MatrixView, _ views: [MatrixView]) {
            self.hidden = hidden
            (normed, q, k, v, attention) = (views[0], views[1], views[2], views[3], views[4])
            (projected, gate, up) = (views[5], views[6], views[7])
        }

        /// The first `hidden.rows` rows of this scratch, around another residual stream: reuses
        /// the buffers instead of allocating (and zeroing) new ones per sequence.
        func reused(for hidden: MatrixView) throws(SheafError) -> Activations {
            var views: [MatrixView] = []
            for m in [normed, q, k, v, attention, projected, gate, up] {
                guard hidden.rows <= m.rows else {
                    throw .shapeMismatch(op: "activations", detail: "\(hidden.rows) rows into a scratch of \(m.rows)")
                }
                views.append(try MatrixView(m.buffer, rows: hidden.rows, cols: m.cols, rowStride: m.rowStride, offset: m.offset))
            }
            return Activations(hidden: hidden, views)
        }
    }

    /// The embedding rows of `tokens` as a (tokens, hidden) matrix on the backend.
    func embed(_ tokens: [Int32]) throws(SheafError) -> MatrixView {
        let d = config.hiddenSize
        for t in tokens where t < 0 || Int(t) >= config.vocabularySize {
            throw .invalidArgument(op: "embed", detail: "token id \(t) outside the vocabulary of \(config.vocabularySize)")
        }
        switch embedding {
        case .host(let table):
            var rows = [Float](repeating: 0, count: tokens.count * d)
            for (i, t) in tokens.enumerated() { for j in 0..<d { rows[i * d + j] = table[Int(t) * d + j] } }
            return try MatrixView(backend.upload(rows, label: "embeddings"), rows: tokens.count, cols: d)
        case .transposedHead(let eT, let identity):
            // Columns `tokens` of Eᵀ (hidden, vocabulary) are the rows wanted, transposed:
            // gather them, then transpose with one GEMM against the identity (2·tokens·hidden²
            // flops, under 0.2% of a forward pass, and exact: each output is one product by 1).
            // A 16-bit Eᵀ is converted column by column instead of gathered; a quantised one
            // holds E's rows as they are wanted, each expanded in place.
            let rows = try backend.zeros(.float32, rows: tokens.count, cols: d)
            let columns = try backend.zeros(.float32, rows: d, cols: tokens.count)
            switch eT.storage {
            case .float32(let v):
                try backend.gatherColumns(v, labels: backend.upload(tokens, label: "token ids"), into: columns)
            case .half(let v):
                for (i, t) in tokens.enumerated() {
                    try backend.convertToFloat32(
                        try MatrixView(v.buffer, rows: d, cols: 1, rowStride: v.rowStride, offset: v.offset + Int(t)),
                        into: try MatrixView(columns.buffer, rows: d, cols: 1, rowStride: tokens.count, offset: i))
                }
            case .quantized(let codes, let minima, let steps, let bits, let group):
                for (i, t) in tokens.enumerated() {
                    let token = Int(t)..<Int(t) + 1
                    try backend.dequantizeRows(
                        codes: try ResidentMatrix.rowBlock(codes, token), minima: try ResidentMatrix.rowBlock(minima, token),
                        steps: try ResidentMatrix.rowBlock(steps, token), bits: bits, group: group,
                        into: try ResidentMatrix.rowBlock(rows, i..<i + 1), transposed: false)
                }
                return rows
            }
            try backend.gemm(columns, transposeA: true, identity, transposeB: false, into: rows, alpha: 1, beta: 0)
            return rows
        }
    }


    /// Key and value rows of earlier positions, per layer, for incremental decoding.
    public final class KVCache: @unchecked Sendable {
        /// (capacity, kvHeads·headDim) per layer.
        let keys: [MatrixView], values: [MatrixView]
        public let capacity: Int
        /// Positions filled so far.
        public internal(set) var length = 0

        init(_ model: LlamaModel, capacity: Int) throws(SheafError) {
            let width = model.config.kvHeadCount * model.config.headDim
            var k: [MatrixView] = [], v: [MatrixView] = []
            for _ in model.layers {
                k.append(try model.backend.zeros(.float32, rows: capacity, cols: width))
                v.append(try model.backend.zeros(.float32, rows: capacity, cols: width))
            }
            keys = k
            values = v
            self.capacity = capacity
        }

        func rows(_ m: MatrixView, _ start: Int, _ count: Int) throws(SheafError) -> MatrixView {
            try MatrixView(m.buffer, rows: count, cols: m.cols, rowStride: m.rowStride, offset: m.offset + start * m.rowStride)
        }
    }

    /// One decoder block; with `grams`, the Gram of each distinct linear input is accumulated
    /// as it is computed (the calibration hooks); with `times`, each step is timed. `sequence`:
    /// the rows hold independent sequences of this many tokens each (several calibration windows
    /// in one batch, so the linear layers and Gram updates see more rows per call); RoPE and
    /// attention then run per sequence, each from position `position`. Not with a cache.
    static func block(
        _ layer: DecoderLayer, _ a: Activations, config c: ModelConfig, backend be: any Backend, position: Int,
        cache: KVCache? = nil, cacheIndex index: Int = 0, grams: LayerGrams? = nil, times: StepTimes? = nil,
        sequence: Int? = nil
    ) throws(SheafError) {
        let length = sequence ?? a.hidden.rows
        guard length > 0, a.hidden.rows % length == 0, cache == nil || length == a.hidden.rows else {
            throw .invalidArgument(op: "block", detail: "\(a.hidden.rows) rows are not whole sequences of \(length) tokens")
        }
        /// Row `s·length ..< (s + 1)·length` of a view: sequence s.
        func part(_ m: MatrixView, _ s: Int) throws(SheafError) -> MatrixView {
            length == m.rows ? m : try MatrixView(m.buffer, rows: length, cols: m.cols, rowStride: m.rowStride, offset: m.offset + s * length * m.rowStride)
        }
        let sequences = a.hidden.rows / length
        let step = Step(times, be)
        try step("rms norm") { () throws(SheafError) in
            try be.rmsNorm(a.hidden, weight: layer.inputNorm, eps: Float(c.rmsNormEps), into: a.normed)
        }
        try grams?.accumulate(.attention, a.normed)
        try step("q, k, v") { () throws(SheafError) in
            try layer.q.forward(a.normed, into: a.q)
            try layer.k.forward(a.normed, into: a.k)
            try layer.v.forward(a.normed, into: a.v)
        }
        try step("rope") { () throws(SheafError) in
            for s in 0..<sequences {
                try be.rope(try part(a.q, s), headDim: c.headDim, positionOffset: position, theta: c.ropeTheta)
                try be.rope(try part(a.k, s), headDim: c.headDim, positionOffset: position, theta: c.ropeTheta)
            }
        }
        var (keys, values) = (a.k, a.v)
        if let cache {
            let t = a.k.rows
            try be.add(a.k, into: try cache.rows(cache.keys[index], position, t))
            try be.add(a.v, into: try cache.rows(cache.values[index], position, t))
            keys = try cache.rows(cache.keys[index], 0, position + t)
            values = try cache.rows(cache.values[index], 0, position + t)
        }
        try step("attention") { () throws(SheafError) in
            if cache != nil {
                try be.causalAttention(
                    q: a.q, k: keys, v: values, into: a.attention, heads: c.headCount, kvHeads: c.kvHeadCount, headDim: c.headDim)
                return
            }
            for s in 0..<sequences {
                try be.causalAttention(
                    q: try part(a.q, s), k: try part(keys, s), v: try part(values, s), into: try part(a.attention, s),
                    heads: c.headCount, kvHeads: c.kvHeadCount, headDim: c.headDim)
            }
        }
        try grams?.accumulate(.attentionOutput, a.attention)
        try step("o") { () throws(SheafError) in try layer.o.forward(a.attention, into: a.projected) }
        try step("residual add") { () throws(SheafError) in try be.add(a.projected, into: a.hidden) }
        try step("rms norm") { () throws(SheafError) in
            try be.rmsNorm(a.hidden, weight: layer.postAttentionNorm, eps: Float(c.rmsNormEps), into: a.normed)
        }
        try grams?.accumulate(.mlp, a.normed)
        try step("gate, up") { () throws(SheafError) in
            try layer.gate.forward(a.normed, into: a.gate)
            try layer.up.forward(a.normed, into: a.up)
        }
        try step("silu·up") { () throws(SheafError) in try be.siluMultiply(gate: a.gate, up: a.up, into: a.gate) }
        try grams?.accumulate(.mlpDown, a.gate)
        try step("down") { () throws(SheafError) in try layer.down.forward(a.gate, into: a.projected) }
        try step("residual add") { () throws(SheafError) in try be.add(a.projected, into: a.hidden) }
    }

    /// Final-norm hidden states of `tokens` at positions `position...`, through the cache if given.
    func run(_ tokens: [Int32], position: Int, cache: KVCache?) throws(SheafError) -> MatrixView {
        guard !tokens.isEmpty else { throw .invalidArgument(op: "forward", detail: "empty token sequence") }
        let a = try Activations(backend, tokens: tokens.count, config)
        try backend.add(try embed(tokens), into: a.hidden)
        for i in layers.indices {
            try Self.block(layers[i], a, config: config, backend: backend, position: position, cache: cache, cacheIndex: i, times: stepTimes)
        }
        try backend.rmsNorm(a.hidden, weight: finalNorm, eps: Float(config.rmsNormEps), into: a.normed)
        return a.normed
    }

    /// Where one sequence's activations first become non-finite (NaN or ±∞): "decoder layer i",
    /// "the final norm" or "the output head"; nil when everything stays finite. Runs the blocks
    /// one at a time and downloads the residual stream after each: for diagnosing, not speed.
    public func firstNonFiniteStep(_ tokens: [Int32]) throws(SheafError) -> String? {
        func finite(_ m: MatrixView) throws(SheafError) -> Bool { (try backend.download(m) as Matrix<Float>).values.allSatisfy(\.isFinite) }
        let a = try Activations(backend, tokens: tokens.count, config)
        try backend.add(try embed(tokens), into: a.hidden)
        for i in layers.indices {
            try Self.block(layers[i], a, config: config, backend: backend, position: 0)
            if !(try finite(a.hidden)) { return "decoder layer \(i)" }
        }
        try backend.rmsNorm(a.hidden, weight: finalNorm, eps: Float(config.rmsNormEps), into: a.normed)
        if !(try finite(a.normed)) { return "the final norm" }
        let out = try backend.zeros(.float32, rows: tokens.count, cols: config.vocabularySize)
        try head.forward(a.normed, into: out)
        return try finite(out) ? nil : "the output head"
    }

    /// Greedy decoding with a KV cache: the prompt is run once, then one token per step, until
    /// `maxTokens` new tokens or `stop`. Returns the new tokens; `onToken` sees each as it comes.
    public func generate(
        prompt: [Int32], maxTokens: Int, stop: Int32? = nil, onToken: (Int32) -> Void = { _ in }
    ) throws(SheafError) -> [Int32] {
        guard !prompt.isEmpty, maxTokens >= 0 else {
            throw .invalidArgument(op: "generate", detail: "needs a non-empty prompt and maxTokens ≥ 0")
        }
        let capacity = prompt.count + maxTokens
        guard capacity <= config.maxPositions else {
            throw .invalidArgument(op: "generate", detail: "prompt + max tokens = \(capacity) exceeds the context of \(config.maxPositions)")
        }
        let cache = try KVCache(self, capacity: capacity)
        let logits = try backend.zeros(.float32, rows: 1, cols: config.vocabularySize)
        var produced: [Int32] = [], input = prompt, position = 0
        while produced.count < maxTokens {
            let h = try run(input, position: position, cache: cache)
            position += input.count
            cache.length = position
            try head.forward(try cache.rows(h, h.rows - 1, 1), into: logits)
            let row: [Float] = try backend.download(logits.buffer)
            var best = 0
            for i in 1..<row.count where row[i] > row[best] { best = i }
            let next = Int32(best)
            produced.append(next)
            onToken(next)
            if next == stop { break }
            input = [next]
        }
        return produced
    }

    /// The final-norm hidden states (tokens, hidden) of one sequence.
    public func hiddenStates(_ tokens: [Int32]) throws(SheafError) -> MatrixView {
        try run(tokens, position: 0, cache: nil)
    }

    /// Logits (tokens, vocabulary) of one sequence: for tests and generation on short inputs.
    public func logits(_ tokens: [Int32]) throws(SheafError) -> Matrix<Float> {
        let h = try hiddenStates(tokens)
        let out = try backend.zeros(.float32, rows: tokens.count, cols: config.vocabularySize)
        try head.forward(h, into: out)
        return try backend.download(out)
    }

    /// Weight bytes one decoded token reads: every linear layer's and the output head's weights
    /// as held (`LinearLayers.residentWeightBytes`); the bytes decode streams a token.
    public var decodeWeightBytes: Int {
        layers.reduce(LinearLayers.residentWeightBytes(head)) { total, layer in
            total + MatrixType.allCases.reduce(0) { $0 + LinearLayers.residentWeightBytes(layer[$1]) }
        }
    }

    /// Logits (tokens, vocabulary) of one sequence computed as decoding computes them: one token
    /// at a time through a KV cache, every product a single row (`gemvStored` on the weights as
    /// stored). Equal to `logits` within two computations' rounding; for tests.
    public func logitsTokenByToken(_ tokens: [Int32]) throws(SheafError) -> Matrix<Float> {
        guard !tokens.isEmpty, tokens.count <= config.maxPositions else {
            throw .invalidArgument(op: "logitsTokenByToken", detail: "\(tokens.count) tokens for a context of \(config.maxPositions)")
        }
        let cache = try KVCache(self, capacity: tokens.count)
        let out = try backend.zeros(.float32, rows: tokens.count, cols: config.vocabularySize)
        for (position, token) in tokens.enumerated() {
            let h = try run([token], position: position, cache: cache)
            cache.length = position + 1
            try head.forward(h, into: try cache.rows(out, position, 1))
        }
        return try backend.download(out)
    }

    /// The residual stream (tokens, hidden) of one sequence entering decoder layer `layer`
    /// (the embedding for layer 0): a probe that changes layer `layer` alone resumes from it.
    public func residual(_ tokens: [Int32], entering layer: Int) throws(SheafError) -> MatrixView {
        guard layer >= 0, layer <= layers.count else { throw .invalidArgument(op: "residual", detail: "layer \(layer) of \(layers.count)") }
        let a = try Activations(backend, tokens: tokens.count, config)
        try backend.add(try embed(tokens), into: a.hidden)
        for i in 0..<layer { try Self.block(layers[i], a, config: config, backend: backend, position: 0) }
        return a.hidden
    }

    /// Runs decoder layer `layer` on a residual stream (tokens, hidden) in place: the stream then
    /// enters layer `layer + 1`.
    public func advance(_ residual: MatrixView, through layer: Int) throws(SheafError) {
        let a = try Activations(backend, tokens: residual.rows, config, hidden: residual)
        try Self.block(layers[layer], a, config: config, backend: backend, position: 0)
    }

    /// Negative log-likelihoods of tokens[1...] given their prefixes (tokens.count − 1
    /// values). The head runs in chunks of `chunkRows` rows so a 2048-token window never holds
    /// all 2048 × vocabulary logits at once. With `residual` (the stream entering layer
    /// `layer`, from `residual(_:entering:)`; left unchanged) only layers `layer...` run.
    public func nextTokenNLL(_ tokens: [Int32], chunkRows: Int = 256, resuming residual: MatrixView? = nil, at layer: Int = 0) throws(SheafError) -> [Float] {
        guard tokens.count >= 2 else { throw .invalidArgument(op: "nextTokenNLL", detail: "need at least 2 tokens, got \(tokens.count)") }
        guard chunkRows > 0 else { throw .invalidArgument(op: "nextTokenNLL", detail: "chunkRows must be positive, got \(chunkRows)") }
        let h = try finalHidden(tokens, resuming: residual, at: layer, op: "nextTokenNLL")
        let predictions = tokens.count - 1
        let logits = try backend.zeros(.float32, rows: min(chunkRows, predictions), cols: config.vocabularySize)
        var nll: [Float] = []
        nll.reserveCapacity(predictions)
        for r0 in stride(from: 0, to: predictions, by: chunkRows) {
            let rows = min(chunkRows, predictions - r0)
            let hChunk = try MatrixView(h.buffer, rows: rows, cols: h.cols, rowStride: h.rowStride, offset: h.offset + r0 * h.rowStride)
            let lChunk = try MatrixView(logits.buffer, rows: rows, cols: logits.cols)
            let step = Step(stepTimes, backend)
            try step("output head") { () throws(SheafError) in try head.forward(hChunk, into: lChunk) }
            let targets = try backend.upload(Array(tokens[(r0 + 1)...(r0 + rows)]))
            let out = try backend.makeBuffer(.float32, count: rows)
            try step("cross-entropy") { () throws(SheafError) in
                try backend.crossEntropy(logits: lChunk, targets: targets, into: out)
            }
            nll.append(contentsOf: try backend.download(out) as [Float])
        }
        return nll
    }

    /// The final-norm hidden states (tokens, hidden) of one sequence; with `residual` (the
    /// stream entering layer `layer`; left unchanged) only layers `layer...` run.
    func finalHidden(_ tokens: [Int32], resuming residual: MatrixView?, at layer: Int, op: String) throws(SheafError) -> MatrixView {
        guard let residual else { return try hiddenStates(tokens) }
        guard residual.rows == tokens.count, residual.cols == config.hiddenSize, layer >= 0, layer <= layers.count else {
            throw .shapeMismatch(op: op, detail: "a (\(residual.rows), \(residual.cols)) residual at layer \(layer) for \(tokens.count) tokens")
        }
        let a = try Activations(backend, tokens: tokens.count, config)
        try backend.add(residual, into: a.hidden)
        for i in layer..<layers.count { try Self.block(layers[i], a, config: config, backend: backend, position: 0) }
        try backend.rmsNorm(a.hidden, weight: finalNorm, eps: Float(config.rmsNormEps), into: a.normed)
        return a.normed
    }

    /// KL(p_reference ‖ p_this), nats, of the next-token distribution at every position of
    /// `tokens` (tokens.count values): `reference` is another model's final-norm hidden states
    /// of the same tokens (from `hiddenStates`, e.g. the dense model's), whose logits this
    /// model's output head recomputes chunk by chunk beside its own (so the reference costs
    /// (tokens, hidden) floats, not (tokens, vocabulary)). `residual` and `layer` as in
    /// `nextTokenNLL`. What a compressed model loses against the dense one, with no label noise:
    /// the expected growth of the loss, ≥ 0 at every token.
    public func nextTokenKL(
        _ tokens: [Int32], reference: MatrixView, chunkRows: Int = 256, resuming residual: MatrixView? = nil, at layer: Int = 0
    ) throws(SheafError) -> [Float] {
        guard !tokens.isEmpty, chunkRows > 0 else {
            throw .invalidArgument(op: "nextTokenKL", detail: "needs tokens and a positive chunkRows (\(tokens.count), \(chunkRows))")
        }
        guard reference.rows == tokens.count, reference.cols == config.hiddenSize else {
            throw .shapeMismatch(op: "nextTokenKL", detail: "reference hidden states \(reference.shape) for \(tokens.count) tokens of \(config.hiddenSize)")
        }
        let h = try finalHidden(tokens, resuming: residual, at: layer, op: "nextTokenKL")
        let rowsPerChunk = min(chunkRows, tokens.count)
        let ours = try backend.zeros(.float32, rows: rowsPerChunk, cols: config.vocabularySize)
        let theirs = try backend.zeros(.float32, rows: rowsPerChunk, cols: config.vocabularySize)
        var kl: [Float] = []
        kl.reserveCapacity(tokens.count)
        for r0 in stride(from: 0, to: tokens.count, by: chunkRows) {
            let rows = min(chunkRows, tokens.count - r0)
            func chunk(_ m: MatrixView) throws(SheafError) -> MatrixView {
                try MatrixView(m.buffer, rows: rows, cols: m.cols, rowStride: m.rowStride, offset: m.offset + r0 * m.rowStride)
            }
            let (lOurs, lTheirs) = (try MatrixView(ours.buffer, rows: rows, cols: ours.cols), try MatrixView(theirs.buffer, rows: rows, cols: theirs.cols))
            try head.forward(try chunk(h), into: lOurs)
            try head.forward(try chunk(reference), into: lTheirs)
            let out = try backend.makeBuffer(.float32, count: rows)
            try backend.klDivergence(reference: lTheirs, logits: lOurs, into: out)
            kl.append(contentsOf: try backend.download(out) as [Float])
        }
        return kl
    }
}

/// Runs one forward-pass step, timing it into `times` (after synchronising the backend) when set.
struct Step {
    let times: StepTimes?
    let backend: any Backend

    init(_ times: StepTimes?, _ backend: any Backend) {
        self.times = times
        self.backend = backend
    }

    func callAsFunction(_ name: String, _ body: () throws(SheafError) -> Void) throws(SheafError) {
        guard let times else { return try body() }
        let t0 = monotonicSeconds()
        try body()
        try backend.synchronize()
        times.add(name, monotonicSeconds() - t0)
    }
}
