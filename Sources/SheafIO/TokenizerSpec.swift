import SheafCore

/// Everything that defines a BPE tokenizer, independent of the file it came from
/// (HF tokenizer.json or GGUF `tokenizer.ggml.*` metadata).
public struct TokenizerSpec: Sendable {
    public enum Kind: String, Sendable {
        /// GPT-2 / Llama-3 / SmolLM style: text bytes spelled in the GPT-2 byte alphabet.
        case byteLevelBPE
        /// Llama-2 / Mistral style: spaces become "▁", unknown scalars fall back to <0xNN> bytes.
        case sentencePieceBPE
    }

    /// GGUF `tokenizer.ggml.token_type` values.
    public enum TokenType: Int32, Sendable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    /// Where a space ("▁" for SentencePiece) is put in front of the text before tokenising.
    public enum PrefixSpace: String, Sendable {
        case never
        /// Only at the very start of the text, unless it already starts with a space
        /// (HF Metaspace `prepend_scheme: "first"`).
        case textStart
        /// Every stretch of text between added tokens, unless it already starts with a space
        /// (HF ByteLevel `add_prefix_space`, Metaspace `prepend_scheme: "always"`).
        case everySegment
        /// Every non-empty stretch between added tokens, even one that starts with a space
        /// (the `Prepend("▁")` normalizer of older Llama-2 tokenizer.json files).
        case everySegmentUnconditional
    }

    /// A token matched literally in the input before pre-tokenization; its text is `vocab[id]`.
    public struct AddedToken: Sendable, Equatable {
        public var id: Int32
        /// Control tokens (BOS, EOS, chat markers): `decode(skipSpecial: true)` drops them.
        public var special: Bool
        /// The match also swallows whitespace to its left / right.
        public var lstrip: Bool
        public var rstrip: Bool

        public init(id: Int32, special: Bool, lstrip: Bool = false, rstrip: Bool = false) {
            self.id = id
            self.special = special
            self.lstrip = lstrip
            self.rstrip = rstrip
        }
    }

    public var kind: Kind
    /// Token strings; a token's id is its index.
    public var vocab: [String]
    /// BPE merges, best (lowest rank) first. Empty for a SentencePiece vocabulary given by `scores`.
    public var merges: [(String, String)]
    /// SentencePiece scores per token (GGUF `tokenizer.ggml.scores`), used to derive merges when
    /// `merges` is empty, as HF's converter does.
    public var scores: [Float]?
    /// One per token, or empty (all normal).
    public var tokenTypes: [TokenType]
    public var preTokenizer: PreTokenizerKind
    public var addedTokens: [AddedToken]
    public var prefixSpace: PrefixSpace
    public var bosID: Int32?
    public var eosID: Int32?
    public var unknownID: Int32?
    /// `encode(_:addSpecial: true)` puts BOS in front / EOS at the end.
    public var addBOS: Bool
    public var addEOS: Bool
    /// A pre-token that is itself in the vocabulary is used whole, without merging (Llama-3).
    public var ignoreMerges: Bool
    /// Scalars missing from the vocabulary become their UTF-8 bytes as <0xNN> tokens.
    public var byteFallback: Bool
    /// Consecutive unknown scalars give one unknown token.
    public var fuseUnknown: Bool

    public init(
        kind: Kind, vocab: [String], merges: [(String, String)], scores: [Float]? = nil,
        tokenTypes: [TokenType] = [], preTokenizer: PreTokenizerKind, addedTokens: [AddedToken] = [],
        prefixSpace: PrefixSpace = .never, bosID: Int32? = nil, eosID: Int32? = nil, unknownID: Int32? = nil,
        addBOS: Bool = false, addEOS: Bool = false, ignoreMerges: Bool = false, byteFallback: Bool = false,
        fuseUnknown: Bool = false
    ) {
        self.kind = kind
        self.vocab = vocab
        self.merges = merges
        self.scores = scores
        self.tokenTypes = tokenTypes
        self.preTokenizer = preTokenizer
        self.addedTokens = addedTokens
        self.prefixSpace = prefixSpace
        self.bosID = bosID
        self.eosID = eosID
        self.unknownID = unknownID
        self.addBOS = addBOS
        self.addEOS = addEOS
        self.ignoreMerges = ignoreMerges
        self.byteFallback = byteFallback
        self.fuseUnknown = fuseUnknown
    }
}

// MARK: - GGUF metadata

extension TokenizerSpec {
    /// llama.cpp `tokenizer.ggml.pre` names and the pre-tokenizer each stands for
    /// (llama.cpp's pre-type table in src/llama-vocab.cpp). A missing name or "default" is read
    /// as GPT-2, the regex such models were trained with; llama.cpp's own fallback for them is a
    /// different, punctuation-splitting regex.
    static let ggufPreTokenizers: [String: PreTokenizerKind] = [
        "default": .gpt2, "gpt2": .gpt2, "gpt-2": .gpt2, "mpt": .gpt2, "olmo": .gpt2, "jais": .gpt2,
        "llama3": .llama3, "llama-v3": .llama3, "llama-bpe": .llama3,
        "smollm": .smollm, "starcoder": .smollm, "refact": .smollm, "command-r": .smollm,
        "codeshell": .smollm, "exaone": .smollm, "minerva-7b": .smollm,
    ]

    /// A spec from GGUF tokenizer metadata: `tokenizer.ggml.model` ("gpt2" byte-level BPE or
    /// "llama" SentencePiece), `.pre`, `.tokens`, `.merges` ("left right" each), `.token_type`,
    /// `.scores`, `.bos_token_id`, `.eos_token_id`, `.unknown_token_id`, `.add_bos_token`,
    /// `.add_eos_token`, `.add_space_prefix`.
    ///
    /// Control and unknown tokens become special added tokens, user-defined ones plain added
    /// tokens: both are matched literally in the text, as llama.cpp and HF do. A SentencePiece
    /// model puts "▁" in front of every stretch of text between added tokens, even one that starts
    /// with a space, as llama.cpp, SentencePiece itself and Llama-2's tokenizer.json do.
    public static func fromGGUFFields(
        model: String, pre: String?, tokens: [String], merges: [String]?, tokenTypes: [Int32]?,
        scores: [Float]?, bos: Int?, eos: Int?, unk: Int?, addBOS: Bool?, addEOS: Bool? = nil,
        addSpacePrefix: Bool? = nil
    ) throws(SheafError) -> TokenizerSpec {
        func fail(_ detail: String) -> SheafError { .invalidArgument(op: "GGUF tokenizer", detail: detail) }
        guard !tokens.isEmpty else { throw fail("tokenizer.ggml.tokens is empty") }
        let count = tokens.count

        var types: [TokenType] = []
        if let tokenTypes {
            guard tokenTypes.count == count else {
                throw fail("tokenizer.ggml.token_type has \(tokenTypes.count) entries for \(count) tokens")
            }
            for (i, raw) in tokenTypes.enumerated() {
                guard let type = TokenType(rawValue: raw) else {
                    throw fail("tokenizer.ggml.token_type[\(i)] is \(raw), expected 1...6")
                }
                types.append(type)
            }
        }
        if let scores, scores.count != count {
            throw fail("tokenizer.ggml.scores has \(scores.count) entries for \(count) tokens")
        }
        func tokenID(_ value: Int?, _ key: String) throws(SheafError) -> Int32? {
            guard let value else { return nil }
            guard value >= 0, value < count else { throw fail("\(key) \(value) is outside the \(count)-token vocabulary") }
            return Int32(value)
        }
        let bosID = try tokenID(bos, "tokenizer.ggml.bos_token_id")
        let eosID = try tokenID(eos, "tokenizer.ggml.eos_token_id")
        var unknownID = try tokenID(unk, "tokenizer.ggml.unknown_token_id")

        var parsedMerges: [(String, String)] = []
        for (i, merge) in (merges ?? []).enumerated() {
            // llama.cpp splits at the first space after the first character.
            guard let space = merge.unicodeScalars.dropFirst().firstIndex(of: " ") else {
                throw fail("tokenizer.ggml.merges[\(i)] '\(merge)' is not two tokens separated by a space")
            }
            let left = String(merge.unicodeScalars[..<space])
            let right = String(merge.unicodeScalars[merge.unicodeScalars.index(after: space)...])
            parsedMerges.append((left, right))
        }

        let added = types.enumerated().compactMap { (i, type) -> AddedToken? in
            switch type {
            case .control, .unknown: AddedToken(id: Int32(i), special: true)
            case .userDefined: AddedToken(id: Int32(i), special: false)
            default: nil
            }
        }

        switch model {
        case "gpt2":
            guard merges != nil else { throw fail("tokenizer.ggml.merges is missing (required for model 'gpt2')") }
            let preName = pre ?? "default"
            guard let preTokenizer = ggufPreTokenizers[preName] else {
                let known = ggufPreTokenizers.keys.sorted().joined(separator: ", ")
                throw fail("tokenizer.ggml.pre '\(preName)' is not supported (supported: \(known))")
            }
            return TokenizerSpec(
                kind: .byteLevelBPE, vocab: tokens, merges: parsedMerges, tokenTypes: types,
                preTokenizer: preTokenizer, addedTokens: added, prefixSpace: .never, bosID: bosID, eosID: eosID,
                unknownID: unknownID, addBOS: addBOS ?? false, addEOS: addEOS ?? false,
                ignoreMerges: preTokenizer == .llama3)
        case "llama":
            guard merges != nil || scores != nil else {
                throw fail("tokenizer.ggml.scores is missing (required for model 'llama' without merges)")
            }
            if unknownID == nil { unknownID = tokens.firstIndex(of: "<unk>").map { Int32($0) } }
            return TokenizerSpec(
                kind: .sentencePieceBPE, vocab: tokens, merges: parsedMerges, scores: merges == nil ? scores : nil,
                tokenTypes: types, preTokenizer: .none, addedTokens: added,
                prefixSpace: (addSpacePrefix ?? true) ? .everySegmentUnconditional : .never, bosID: bosID, eosID: eosID,
                unknownID: unknownID, addBOS: addBOS ?? true, addEOS: addEOS ?? false, byteFallback: true,
                fuseUnknown: true)
        default:
            throw fail("tokenizer.ggml.model '\(model)' is not supported (expected 'gpt2' or 'llama')")
        }
    }
}
