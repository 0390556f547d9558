import Foundation
import SheafCore

/// A BPE tokenizer: byte-level (GPT-2, Llama-3, SmolLM) or SentencePiece-style (Llama-2,
/// Mistral), giving the same ids as HuggingFace `tokenizers` on the same tokenizer.json.
///
/// Encoding: added tokens are matched literally first (leftmost, longest); the text between them
/// is pre-tokenized and each piece merged by BPE. Immutable, so one instance serves any number
/// of threads; the cache of merged words lives for one `encode` call.
public final class Tokenizer: Sendable {
    public let spec: TokenizerSpec
    /// The merges in rank order: the spec's, or those derived from SentencePiece scores.
    let effectiveMerges: [(String, String)]
    let merges: BPEMerges
    /// UTF-8 of a token's string -> its id (the last id when a string repeats).
    let idOfTokenBytes: [[UInt8]: Int32]
    /// Byte-level: the token of each byte's alphabet scalar. SentencePiece: the <0xNN> token. -1 if none.
    let byteTokenIDs: [Int32]
    /// SentencePiece: tokens that are one scalar.
    let scalarTokenIDs: [UInt32: Int32]
    /// Byte-level with `ignoreMerges`: the raw bytes a token spells -> its id.
    let tokenOfRawBytes: [[UInt8]: Int32]
    let addedTokens: AddedTokenMatcher
    /// What `decode` emits for each id; for SentencePiece byte tokens see `byteFallbackValues`.
    let decodedBytes: [[UInt8]]
    /// SentencePiece: the byte of a <0xNN> token, else -1.
    let byteFallbackValues: [Int16]
    let isSpecial: [Bool]

    public var vocabularySize: Int { spec.vocab.count }
    public var bosID: Int32? { spec.bosID }
    public var eosID: Int32? { spec.eosID }

    /// Words longer than this (in bytes) skip the per-call cache: they rarely repeat.
    static let maxCachedWordBytes = 64
    /// The per-call cache is dropped when it grows past this many words, bounding memory.
    static let maxCachedWords = 200_000

    public init(spec: TokenizerSpec) throws(SheafError) {
        func fail(_ detail: String) -> SheafError { .invalidArgument(op: "Tokenizer", detail: detail) }
        let count = spec.vocab.count
        guard count > 0 else { throw fail("the vocabulary is empty") }
        guard count < Int(Int32.max) else { throw fail("the vocabulary has \(count) tokens, more than Int32 ids allow") }
        guard spec.tokenTypes.isEmpty || spec.tokenTypes.count == count else {
            throw fail("\(spec.tokenTypes.count) token types for \(count) tokens")
        }
        for (name, id) in [("BOS", spec.bosID), ("EOS", spec.eosID), ("unknown", spec.unknownID)] {
            if let id, id < 0 || Int(id) >= count { throw fail("\(name) id \(id) is outside the \(count)-token vocabulary") }
        }
        for token in spec.addedTokens where token.id < 0 || Int(token.id) >= count {
            throw fail("added token id \(token.id) is outside the \(count)-token vocabulary")
        }
        switch spec.kind {
        case .byteLevelBPE:
            guard spec.preTokenizer != .metaspace else { throw fail("the metaspace pre-tokenizer needs a SentencePiece tokenizer") }
            guard spec.prefixSpace == .never || (spec.prefixSpace == .everySegment && [.gpt2, .none].contains(spec.preTokenizer)) else {
                throw fail("byte-level prefix space '\(spec.prefixSpace)' with pre-tokenizer '\(spec.preTokenizer)' is not supported")
            }
        case .sentencePieceBPE:
            guard spec.preTokenizer == .none || spec.preTokenizer == .metaspace else {
                throw fail("a SentencePiece tokenizer takes pre-tokenizer none or metaspace, not '\(spec.preTokenizer)'")
            }
        }
        self.spec = spec

        var idOfTokenBytes: [[UInt8]: Int32] = [:]
        idOfTokenBytes.reserveCapacity(count)
        for (id, token) in spec.vocab.enumerated() { idOfTokenBytes[Array(token.utf8)] = Int32(id) }
        self.idOfTokenBytes = idOfTokenBytes

        if spec.merges.isEmpty, spec.kind == .sentencePieceBPE, let scores = spec.scores {
            guard scores.count == count else { throw fail("\(scores.count) scores for \(count) tokens") }
            effectiveMerges = Self.mergesFromScores(vocab: spec.vocab, scores: scores, idOfTokenBytes: idOfTokenBytes)
        } else {
            effectiveMerges = spec.merges
        }
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(effectiveMerges.count)
        for (rank, (left, right)) in effectiveMerges.enumerated() {
            guard let l = idOfTokenBytes[Array(left.utf8)], let r = idOfTokenBytes[Array(right.utf8)] else {
                throw fail("merge \(rank) ('\(left)', '\(right)') uses a token that is not in the vocabulary")
            }
            guard let merged = idOfTokenBytes[Array(left.utf8) + Array(right.utf8)] else {
                throw fail("merge \(rank) ('\(left)', '\(right)'): '\(left + right)' is not in the vocabulary")
            }
            table[BPEMerges.key(l, r)] = BPEMerges.value(rank: rank, merged: merged)  // a repeated pair keeps its last rank, as in HF
        }
        merges = BPEMerges(table: table)

        var isSpecial = [Bool](repeating: false, count: count)
        for token in spec.addedTokens where token.special { isSpecial[Int(token.id)] = true }
        self.isSpecial = isSpecial
        addedTokens = AddedTokenMatcher(spec.addedTokens.map { (Array(spec.vocab[Int($0.id)].utf8), $0) })

        var byteTokenIDs = [Int32](repeating: -1, count: 256)
        var scalarTokenIDs: [UInt32: Int32] = [:]
        var tokenOfRawBytes: [[UInt8]: Int32] = [:]
        var decodedBytes: [[UInt8]] = []
        var byteFallbackValues: [Int16] = []
        decodedBytes.reserveCapacity(count)
        switch spec.kind {
        case .byteLevelBPE:
            for b in 0..<256 {
                byteTokenIDs[b] = idOfTokenBytes[Array(String(ByteAlphabet.scalars[b]).utf8)] ?? -1
            }
            for (id, token) in spec.vocab.enumerated() {
                // HF's ByteLevel decoder: a token outside the alphabet is emitted as its own UTF-8.
                let raw = ByteAlphabet.decode(token)
                decodedBytes.append(raw ?? Array(token.utf8))
                if spec.ignoreMerges, let raw { tokenOfRawBytes[raw] = Int32(id) }
            }
        case .sentencePieceBPE:
            byteFallbackValues.reserveCapacity(count)
            for (id, token) in spec.vocab.enumerated() {
                let scalars = token.unicodeScalars
                if scalars.count == 1, let only = scalars.first { scalarTokenIDs[only.value] = Int32(id) }
                let byte = Self.byteFallbackValue(token)
                byteFallbackValues.append(byte.map { Int16($0) } ?? -1)
                if let byte, spec.byteFallback, token == Self.byteFallbackToken(byte) { byteTokenIDs[Int(byte)] = Int32(id) }
                var spaced = String.UnicodeScalarView()
                for scalar in token.unicodeScalars { spaced.append(scalar == "\u{2581}" ? " " : scalar) }
                decodedBytes.append(Array(String(spaced).utf8))
            }
        }
        self.byteTokenIDs = byteTokenIDs
        self.scalarTokenIDs = scalarTokenIDs
        self.tokenOfRawBytes = tokenOfRawBytes
        self.decodedBytes = decodedBytes
        self.byteFallbackValues = byteFallbackValues
    }

    /// Reads an HF tokenizer.json (BPE models; see `TokenizerSpec.fromTokenizerJSON`).
    public static func load(tokenizerJSON path: String) throws(SheafError) -> Tokenizer {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw .io(path: path, detail: "cannot read: \(error.localizedDescription)")
        }
        let spec = try TokenizerSpec.fromTokenizerJSON([UInt8](data), path: path)
        do { return try Tokenizer(spec: spec) } catch {
            if case .invalidArgument(_, let detail) = error { throw .io(path: path, detail: detail) }
            throw error
        }
    }

    /// An HF-compatible tokenizer.json for this tokenizer: HF `tokenizers` loads it and gives the
    /// same ids. BOS/EOS appear only through a TemplateProcessing post-processor when added.
    public func tokenizerJSON() -> Data {
        var writer = TokenizerJSONWriter()
        writer.value(tokenizerJSONValue())
        return Data(writer.bytes)
    }

    /// Writes `tokenizerJSON()` to `path` atomically.
    public func writeTokenizerJSON(to path: String) throws(SheafError) {
        try atomicWrite(tokenizerJSON(), to: path)
    }

    // MARK: Encoding

    /// Token ids of `text`; with `addSpecial`, BOS/EOS as the spec asks (`addBOS`, `addEOS`).
    public func encode(_ text: String, addSpecial: Bool = false) -> [Int32] {
        var ids: [Int32] = []
        ids.reserveCapacity(text.utf8.count / 3)
        if addSpecial, spec.addBOS, let bos = spec.bosID { ids.append(bos) }
        let bytes = Array(text.utf8)
        var cache: [[UInt8]: [Int32]] = [:]
        for segment in addedTokens.segments(bytes) {
            switch segment {
            case .token(let id):
                ids.append(id)
            case .text(let range):
                switch spec.kind {
                case .byteLevelBPE: encodeByteLevel(bytes[range], atTextStart: range.lowerBound == 0, into: &ids, cache: &cache)
                case .sentencePieceBPE: encodeSentencePiece(bytes[range], atTextStart: range.lowerBound == 0, into: &ids)
                }
            }
        }
        if addSpecial, spec.addEOS, let eos = spec.eosID { ids.append(eos) }
        return ids
    }

    private func encodeByteLevel(
        _ segment: ArraySlice<UInt8>, atTextStart: Bool, into ids: inout [Int32], cache: inout [[UInt8]: [Int32]]
    ) {
        var bytes = Array(segment)
        if spec.prefixSpace == .everySegment || (spec.prefixSpace == .textStart && atTextStart), bytes.first != 0x20 {
            bytes.insert(0x20, at: 0)
        }
        let text = ScalarText(utf8: bytes, classify: true)
        var ends: [Int] = []
        PreTokenizer.split(text, 0..<text.count, kind: spec.preTokenizer, into: &ends)
        var start = 0
        for end in ends {
            let piece = bytes[text.offsets[start]..<text.offsets[end]]
            start = end
            if piece.count == 1 {
                let id = byteTokenIDs[Int(piece[piece.startIndex])]
                if id >= 0 { ids.append(id) } else if let unk = spec.unknownID { ids.append(unk) }
                continue
            }
            let cacheable = piece.count <= Self.maxCachedWordBytes
            let key = Array(piece)
            if cacheable, let hit = cache[key] {
                ids.append(contentsOf: hit)
                continue
            }
            var symbols: [Int32]
            if spec.ignoreMerges, let whole = tokenOfRawBytes[key] {
                symbols = [whole]
            } else {
                symbols = []
                symbols.reserveCapacity(piece.count)
                for b in piece {
                    let id = byteTokenIDs[Int(b)]
                    if id >= 0 { symbols.append(id) } else if let unk = spec.unknownID { symbols.append(unk) }
                }
                merges.apply(&symbols)
            }
            ids.append(contentsOf: symbols)
            if cacheable {
                if cache.count >= Self.maxCachedWords { cache.removeAll(keepingCapacity: true) }
                cache[key] = symbols
            }
        }
    }

    private func encodeSentencePiece(_ segment: ArraySlice<UInt8>, atTextStart: Bool, into ids: inout [Int32]) {
        guard !segment.isEmpty else { return }
        var text = ScalarText(utf8: Array(segment), classify: false)
        let metaspace: UInt32 = 0x2581
        let startsWithSpace = text.scalars[0] == 0x20 || text.scalars[0] == metaspace
        let prepend =
            switch spec.prefixSpace {
            case .never: false
            case .textStart: atTextStart && !startsWithSpace
            case .everySegment: !startsWithSpace
            case .everySegmentUnconditional: true
            }
        var scalars = text.scalars
        for i in scalars.indices where scalars[i] == 0x20 { scalars[i] = metaspace }
        if prepend { scalars.insert(metaspace, at: 0) }
        text.scalars = scalars
        var ends: [Int] = []
        PreTokenizer.split(text, 0..<scalars.count, kind: spec.preTokenizer, into: &ends)
        var start = 0
        for end in ends {
            let piece = scalars[start..<end]
            start = end
            if spec.ignoreMerges {
                var utf8: [UInt8] = []
                for v in piece { utf8.append(contentsOf: String(Unicode.Scalar(v) ?? "\u{FFFD}").utf8) }
                if let whole = idOfTokenBytes[utf8] {
                    ids.append(whole)
                    continue
                }
            }
            var symbols: [Int32] = []
            symbols.reserveCapacity(piece.count)
            var previousWasUnknown = false
            for value in piece {
                if let id = scalarTokenIDs[value] {
                    symbols.append(id)
                    previousWasUnknown = false
                    continue
                }
                if spec.byteFallback, let scalar = Unicode.Scalar(value) {
                    let utf8 = Array(String(scalar).utf8)
                    if utf8.allSatisfy({ byteTokenIDs[Int($0)] >= 0 }) {
                        symbols.append(contentsOf: utf8.map { byteTokenIDs[Int($0)] })
                        previousWasUnknown = false
                        continue
                    }
                }
                guard let unk = spec.unknownID else { continue }  // no unknown token: HF drops the scalar
                if !(spec.fuseUnknown && previousWasUnknown) { symbols.append(unk) }
                previousWasUnknown = true
            }
            merges.apply(&symbols)
            ids.append(contentsOf: symbols)
        }
    }

    // MARK: Decoding

    /// The text of `ids`; ids outside the vocabulary are skipped, and so are special tokens
    /// when `skipSpecial`. Bytes that do not form UTF-8 become U+FFFD, as in HF.
    public func decode(_ ids: [Int32], skipSpecial: Bool = false) -> String {
        var out: [UInt8] = []
        let count = decodedBytes.count
        switch spec.kind {
        case .byteLevelBPE:
            for id in ids where id >= 0 && Int(id) < count && !(skipSpecial && isSpecial[Int(id)]) {
                out.append(contentsOf: decodedBytes[Int(id)])
            }
            return String(decoding: out, as: UTF8.self)
        case .sentencePieceBPE:
            // HF's ByteFallback decoder: a run of <0xNN> tokens that is not valid UTF-8 gives one
            // U+FFFD per byte.
            var pending: [UInt8] = []
            func flush() {
                if pending.isEmpty { return }
                if String(validating: pending, as: UTF8.self) != nil {
                    out.append(contentsOf: pending)
                } else {
                    for _ in pending { out.append(contentsOf: [0xEF, 0xBF, 0xBD]) }
                }
                pending.removeAll(keepingCapacity: true)
            }
            for id in ids where id >= 0 && Int(id) < count && !(skipSpecial && isSpecial[Int(id)]) {
                let byte = byteFallbackValues[Int(id)]
                if byte >= 0 {
                    pending.append(UInt8(byte))
                } else {
                    flush()
                    out.append(contentsOf: decodedBytes[Int(id)])
                }
            }
            flush()
            // The space put in front of the text when encoding is not part of it.
            if spec.prefixSpace != .never, out.first == 0x20 { out.removeFirst() }
            return String(decoding: out, as: UTF8.self)
        }
    }

    /// The byte of a token spelled `<0xNN>` (either hex case, as HF's ByteFallback decoder reads it).
    static func byteFallbackValue(_ token: String) -> UInt8? {
        let utf8 = Array(token.utf8)
        guard utf8.count == 6, utf8[0] == UInt8(ascii: "<"), utf8[1] == UInt8(ascii: "0"), utf8[2] == UInt8(ascii: "x"),
            utf8[5] == UInt8(ascii: ">")
        else { return nil }
        return UInt8(String(decoding: utf8[3..<5], as: UTF8.self), radix: 16)
    }

    /// The token HF's BPE looks up for a byte it falls back to: "<0x0A>", uppercase hex.
    static func byteFallbackToken(_ byte: UInt8) -> String {
        let hex = String(byte, radix: 16, uppercase: true)
        return "<0x" + (hex.count == 1 ? "0" : "") + hex + ">"
    }

    /// SentencePiece merges from scores, as HF's converter derives them: every split of a token
    /// into two tokens is a merge; merges sort by the merged token's score (best first), then
    /// longer left part, longer right part, then token order and (left id, right id).
    static func mergesFromScores(vocab: [String], scores: [Float], idOfTokenBytes: [[UInt8]: Int32]) -> [(String, String)] {
        struct Candidate {
            var score: Float
            var leftLength: Int
            var rightLength: Int
            var order: Int
            var left: String
            var right: String
        }
        var candidates: [Candidate] = []
        for (id, token) in vocab.enumerated() {
            let scalars = Array(token.unicodeScalars)
            guard scalars.count >= 2 else { continue }
            var local: [(Int32, Int32, String, String, Int)] = []
            for cut in 1..<scalars.count {
                var left = String.UnicodeScalarView()
                left.append(contentsOf: scalars[..<cut])
                var right = String.UnicodeScalarView()
                right.append(contentsOf: scalars[cut...])
                let l = String(left)
                let r = String(right)
                if let lid = idOfTokenBytes[Array(l.utf8)], let rid = idOfTokenBytes[Array(r.utf8)] {
                    local.append((lid, rid, l, r, cut))
                }
            }
            local.sort { ($0.0, $0.1) < ($1.0, $1.1) }
            for (_, _, l, r, cut) in local {
                candidates.append(
                    Candidate(
                        score: scores[id], leftLength: cut, rightLength: scalars.count - cut, order: candidates.count,
                        left: l, right: r))
            }
        }
        candidates.sort {
            if $0.score != $1.score { return $0.score > $1.score }
            if $0.leftLength != $1.leftLength { return $0.leftLength > $1.leftLength }
            if $0.rightLength != $1.rightLength { return $0.rightLength > $1.rightLength }
            return $0.order < $1.order
        }
        return candidates.map { ($0.left, $0.right) }
    }
}

/// Finds added tokens in UTF-8 text: at the leftmost position where any matches, the longest.
struct AddedTokenMatcher: Sendable {
    struct Entry: Sendable {
        var bytes: [UInt8]
        var token: TokenizerSpec.AddedToken
    }

    enum Segment {
        case text(Range<Int>)
        case token(Int32)
    }

    /// Entries by first byte, longest first.
    private let byFirstByte: [[Entry]]

    init(_ tokens: [([UInt8], TokenizerSpec.AddedToken)]) {
        var buckets = [[Entry]](repeating: [], count: 256)
        for (bytes, token) in tokens where !bytes.isEmpty { buckets[Int(bytes[0])].append(Entry(bytes: bytes, token: token)) }
        byFirstByte = buckets.map { $0.sorted { $0.bytes.count > $1.bytes.count } }
    }

    /// The text split into stretches of plain text (never empty) and added tokens.
    func segments(_ text: [UInt8]) -> [Segment] {
        var out: [Segment] = []
        var textStart = 0
        var i = 0
        let n = text.count
        while i < n {
            let bucket = byFirstByte[Int(text[i])]
            guard !bucket.isEmpty, let entry = bucket.first(where: { matches($0.bytes, text, at: i) }) else {
                i += 1
                continue
            }
            var start = i
            var end = i + entry.bytes.count
            if entry.token.lstrip {
                while start > textStart, let (scalar, length) = Self.scalar(endingAt: start, in: text), scalar.properties.isWhitespace {
                    start -= length
                }
            }
            if entry.token.rstrip {
                while end < n, let (scalar, length) = Self.scalar(startingAt: end, in: text), scalar.properties.isWhitespace {
                    end += length
                }
            }
            if start > textStart { out.append(.text(textStart..<start)) }
            out.append(.token(entry.token.id))
            textStart = end
            i = end
        }
        if textStart < n { out.append(.text(textStart..<n)) }
        return out
    }

    private func matches(_ needle: [UInt8], _ text: [UInt8], at i: Int) -> Bool {
        guard i + needle.count <= text.count else { return false }
        for k in 1..<needle.count where text[i + k] != needle[k] { return false }
        return true
    }

    private static func scalar(startingAt i: Int, in text: [UInt8]) -> (Unicode.Scalar, Int)? {
        var iterator = text[i...].makeIterator()
        var decoder = UTF8()
        guard case .scalarValue(let scalar) = decoder.decode(&iterator) else { return nil }
        return (scalar, String(scalar).utf8.count)
    }

    private static func scalar(endingAt i: Int, in text: [UInt8]) -> (Unicode.Scalar, Int)? {
        var start = i - 1
        while start > 0, text[start] & 0xC0 == 0x80 { start -= 1 }
        return scalar(startingAt: start, in: text)
    }
}
