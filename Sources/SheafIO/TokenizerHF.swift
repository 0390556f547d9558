import SheafCore

/// Reading and writing HuggingFace tokenizer.json files (the BPE subset Sheaf supports).
///
/// Recognised layouts:
/// - byte-level: pre_tokenizer `ByteLevel(use_regex)`, `Sequence[Digits(individual_digits),
///   ByteLevel]` (SmolLM), or `Sequence[Split(Regex gpt2|llama3), ByteLevel(use_regex: false)]`;
/// - SentencePiece: pre_tokenizer `Metaspace`, or the older normalizer
///   `Sequence[Prepend("▁"), Replace(" ", "▁")]` with no pre_tokenizer (Llama-2).
extension TokenizerSpec {
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let metaspace = "\u{2581}"

    /// Parses tokenizer.json bytes; `path` names the file in errors.
    public static func fromTokenizerJSON(_ bytes: [UInt8], path: String) throws(SheafError) -> TokenizerSpec {
        var reader = HFTokenizerReader(path: path)
        return try reader.read(bytes)
    }
}

/// Field access with errors that name the file and the key path.
private struct HFTokenizerReader {
    let path: String

    func fail(_ key: String, _ detail: String) -> SheafError { .io(path: path, detail: "\(key): \(detail)") }

    func object(_ value: TokenizerJSONValue?, _ key: String) throws(SheafError) -> TokenizerJSONValue {
        guard let value else { throw fail(key, "missing (expected an object)") }
        guard case .object = value else { throw fail(key, "expected an object, found \(value.typeName)") }
        return value
    }

    func members(_ value: TokenizerJSONValue?, _ key: String) throws(SheafError) -> [(key: String, value: TokenizerJSONValue)] {
        guard let value else { throw fail(key, "missing (expected an object)") }
        guard case .object(let members) = value else { throw fail(key, "expected an object, found \(value.typeName)") }
        return members
    }

    func string(_ value: TokenizerJSONValue?, _ key: String) throws(SheafError) -> String {
        guard let value else { throw fail(key, "missing (expected a string)") }
        guard case .string(let s) = value else { throw fail(key, "expected a string, found \(value.typeName)") }
        return s
    }

    /// A string, or nil when the key is absent or null.
    func optionalString(_ value: TokenizerJSONValue?, _ key: String) throws(SheafError) -> String? {
        guard let value, !value.isNull else { return nil }
        return try string(value, key)
    }

    /// A boolean; absent or null reads as `default`.
    func bool(_ value: TokenizerJSONValue?, _ key: String, default defaultValue: Bool) throws(SheafError) -> Bool {
        switch value {
        case nil, .null?: return defaultValue
        case .bool(let b)?: return b
        case let other?: throw fail(key, "expected a boolean, found \(other.typeName)")
        }
    }

    func tokenID(_ value: TokenizerJSONValue?, _ key: String) throws(SheafError) -> Int32 {
        guard let value else { throw fail(key, "missing (expected a token id)") }
        guard case .number(let n) = value, n >= 0, n < 16_777_216, n == n.rounded() else {
            throw fail(key, "expected a token id (an integer 0..<2^24), found \(value.typeName)")
        }
        return Int32(n)
    }

    func array(_ value: TokenizerJSONValue?, _ key: String) throws(SheafError) -> [TokenizerJSONValue] {
        guard let value else { throw fail(key, "missing (expected an array)") }
        guard case .array(let a) = value else { throw fail(key, "expected an array, found \(value.typeName)") }
        return a
    }

    /// A component's "type" field, for pre_tokenizer / normalizer / post_processor objects.
    func componentType(_ value: TokenizerJSONValue, _ key: String) throws(SheafError) -> String {
        try string(object(value, key)["type"], key + ".type")
    }

    mutating func read(_ bytes: [UInt8]) throws(SheafError) -> TokenizerSpec {
        let root: TokenizerJSONValue
        do { root = try TokenizerJSONParser.parse(bytes) } catch {
            throw .io(path: path, detail: "not valid JSON: \(error.message)")
        }
        guard case .object = root else { throw .io(path: path, detail: "expected a JSON object at the top level, found \(root.typeName)") }
        let model = try object(root["model"], "model")
        if let type = model["type"] {
            let name = try string(type, "model.type")
            guard name == "BPE" else { throw fail("model.type", "'\(name)' is not supported (only BPE tokenizers are)") }
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let affix = try optionalString(model[key], "model.\(key)"), !affix.isEmpty {
                throw fail("model.\(key)", "'\(affix)' is not supported (only null or empty)")
            }
        }

        // Vocabulary: model.vocab plus added tokens, which may extend it.
        var tokenOfID: [Int: String] = [:]
        for (token, idValue) in try members(model["vocab"], "model.vocab") {
            let id = Int(try tokenID(idValue, "model.vocab[\"\(token)\"]"))
            if let other = tokenOfID[id], !other.unicodeScalars.elementsEqual(token.unicodeScalars) {
                throw fail("model.vocab", "id \(id) is given to both '\(other)' and '\(token)'")
            }
            tokenOfID[id] = token
        }
        var added: [TokenizerSpec.AddedToken] = []
        let addedList = root["added_tokens"].flatMap { $0.isNull ? nil : $0 } ?? .array([])
        for (i, entry) in try array(addedList, "added_tokens").enumerated() {
            let key = "added_tokens[\(i)]"
            let item = try object(entry, key)
            let id = try tokenID(item["id"], key + ".id")
            let content = try string(item["content"], key + ".content")
            if let existing = tokenOfID[Int(id)], !existing.unicodeScalars.elementsEqual(content.unicodeScalars) {
                throw fail(key, "content '\(content)' differs from the vocabulary's token \(id) '\(existing)'")
            }
            if try bool(item["single_word"], key + ".single_word", default: false) {
                throw fail(key + ".single_word", "true is not supported")
            }
            tokenOfID[Int(id)] = content
            added.append(
                .init(
                    id: id, special: try bool(item["special"], key + ".special", default: false),
                    lstrip: try bool(item["lstrip"], key + ".lstrip", default: false),
                    rstrip: try bool(item["rstrip"], key + ".rstrip", default: false)))
        }
        guard let maxID = tokenOfID.keys.max() else { throw fail("model.vocab", "is empty") }
        var vocab: [String] = []
        vocab.reserveCapacity(maxID + 1)
        for id in 0...maxID {
            guard let token = tokenOfID[id] else { throw fail("model.vocab", "no token has id \(id) (ids must be 0..<\(maxID + 1))") }
            vocab.append(token)
        }
        var idOfToken: [[UInt8]: Int32] = [:]
        for (id, token) in vocab.enumerated() { idOfToken[Array(token.utf8)] = Int32(id) }

        var merges: [(String, String)] = []
        for (i, entry) in try array(model["merges"] ?? .array([]), "model.merges").enumerated() {
            let key = "model.merges[\(i)]"
            switch entry {
            case .string(let line):
                // The older format: "left right", exactly one space.
                let parts = line.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw fail(key, "'\(line)' is not two tokens separated by one space") }
                merges.append((String(parts[0]), String(parts[1])))
            case .array(let pair):
                guard pair.count == 2 else { throw fail(key, "expected a pair of strings, found \(pair.count) elements") }
                merges.append((try string(pair[0], key + "[0]"), try string(pair[1], key + "[1]")))
            default:
                throw fail(key, "expected a string or a pair of strings, found \(entry.typeName)")
            }
        }

        var unknownID: Int32?
        if let unk = try optionalString(model["unk_token"], "model.unk_token") {
            guard let id = idOfToken[Array(unk.utf8)] else { throw fail("model.unk_token", "'\(unk)' is not in the vocabulary") }
            unknownID = id
        }
        let byteFallback = try bool(model["byte_fallback"], "model.byte_fallback", default: false)

        let layout = try readLayout(normalizer: root["normalizer"], preTokenizer: root["pre_tokenizer"])
        let (bosID, eosID) = try readTemplate(root["post_processor"], "post_processor", idOfToken: idOfToken)

        var types = [TokenizerSpec.TokenType](repeating: .normal, count: vocab.count)
        if byteFallback {
            for (id, token) in vocab.enumerated() where Tokenizer.byteFallbackValue(token) != nil { types[id] = .byte }
        }
        for token in added { types[Int(token.id)] = token.special ? .control : .userDefined }
        if let unknownID { types[Int(unknownID)] = .unknown }

        return TokenizerSpec(
            kind: layout.kind, vocab: vocab, merges: merges, tokenTypes: types, preTokenizer: layout.preTokenizer,
            addedTokens: added, prefixSpace: layout.prefixSpace, bosID: bosID, eosID: eosID, unknownID: unknownID,
            addBOS: bosID != nil, addEOS: eosID != nil,
            ignoreMerges: try bool(model["ignore_merges"], "model.ignore_merges", default: false),
            byteFallback: byteFallback, fuseUnknown: try bool(model["fuse_unk"], "model.fuse_unk", default: false))
    }

    struct Layout {
        var kind: TokenizerSpec.Kind
        var preTokenizer: PreTokenizerKind
        var prefixSpace: TokenizerSpec.PrefixSpace
    }

    /// The tokenizer kind, pre-tokenizer and prefix handling from the normalizer and pre_tokenizer.
    func readLayout(normalizer: TokenizerJSONValue?, preTokenizer: TokenizerJSONValue?) throws(SheafError) -> Layout {
        var legacyPrepend = false
        if let normalizer, !normalizer.isNull {
            // Only the Llama-2 pair Prepend("▁") + Replace(" " -> "▁") is supported.
            let type = try componentType(normalizer, "normalizer")
            let steps = type == "Sequence" ? try array(normalizer["normalizers"], "normalizer.normalizers") : [normalizer]
            var sawPrepend = false
            var sawReplace = false
            for (i, step) in steps.enumerated() {
                let key = type == "Sequence" ? "normalizer.normalizers[\(i)]" : "normalizer"
                let stepType = try componentType(step, key)
                if stepType == "Prepend", try string(step["prepend"], key + ".prepend") == TokenizerSpec.metaspace {
                    sawPrepend = true
                    continue
                }
                if stepType == "Replace" {
                    let pattern = try string(object(step["pattern"], key + ".pattern")["String"], key + ".pattern.String")
                    let content = try string(step["content"], key + ".content")
                    if pattern == " ", content == TokenizerSpec.metaspace {
                        sawReplace = true
                        continue
                    }
                }
                throw fail(key, "normalizer '\(stepType)' is not supported (only Prepend(\"▁\") and Replace(\" \", \"▁\"))")
            }
            guard sawReplace else { throw fail("normalizer", "a Prepend without Replace(\" \", \"▁\") is not supported") }
            legacyPrepend = sawPrepend
            if let preTokenizer, !preTokenizer.isNull {
                throw fail("pre_tokenizer", "must be null when the normalizer replaces spaces with ▁")
            }
            return Layout(kind: .sentencePieceBPE, preTokenizer: .none, prefixSpace: legacyPrepend ? .everySegmentUnconditional : .never)
        }
        guard let preTokenizer, !preTokenizer.isNull else {
            throw fail("pre_tokenizer", "missing (expected ByteLevel, a Sequence ending in ByteLevel, or Metaspace)")
        }
        let type = try componentType(preTokenizer, "pre_tokenizer")
        switch type {
        case "ByteLevel":
            let useRegex = try bool(preTokenizer["use_regex"], "pre_tokenizer.use_regex", default: true)
            let prefix = try bool(preTokenizer["add_prefix_space"], "pre_tokenizer.add_prefix_space", default: true)
            return Layout(kind: .byteLevelBPE, preTokenizer: useRegex ? .gpt2 : .none, prefixSpace: prefix ? .everySegment : .never)
        case "Metaspace":
            let replacement = try string(preTokenizer["replacement"], "pre_tokenizer.replacement")
            guard replacement == TokenizerSpec.metaspace else {
                throw fail("pre_tokenizer.replacement", "'\(replacement)' is not supported (only \"▁\")")
            }
            let prefix: TokenizerSpec.PrefixSpace
            if let scheme = try optionalString(preTokenizer["prepend_scheme"], "pre_tokenizer.prepend_scheme") {
                switch scheme {
                case "first": prefix = .textStart
                case "always": prefix = .everySegment
                case "never": prefix = .never
                default: throw fail("pre_tokenizer.prepend_scheme", "'\(scheme)' is not one of first, always, never")
                }
            } else {
                // Files older than prepend_scheme say add_prefix_space, which meant "always".
                let add = try bool(preTokenizer["add_prefix_space"], "pre_tokenizer.add_prefix_space", default: true)
                prefix = add ? .everySegment : .never
            }
            let split = try bool(preTokenizer["split"], "pre_tokenizer.split", default: true)
            return Layout(kind: .sentencePieceBPE, preTokenizer: split ? .metaspace : .none, prefixSpace: prefix)
        case "Sequence":
            let steps = try array(preTokenizer["pretokenizers"], "pre_tokenizer.pretokenizers")
            guard steps.count == 2 else { throw unsupportedSequence(steps) }
            let last = steps[1]
            guard try componentType(last, "pre_tokenizer.pretokenizers[1]") == "ByteLevel" else { throw unsupportedSequence(steps) }
            if try bool(last["add_prefix_space"], "pre_tokenizer.pretokenizers[1].add_prefix_space", default: true) {
                // HF would add a space to every piece the first step made: not supported.
                throw fail("pre_tokenizer.pretokenizers[1].add_prefix_space", "true after another pre-tokenizer is not supported")
            }
            let useRegex = try bool(last["use_regex"], "pre_tokenizer.pretokenizers[1].use_regex", default: true)
            let first = steps[0]
            switch try componentType(first, "pre_tokenizer.pretokenizers[0]") {
            case "Digits" where useRegex:
                guard try bool(first["individual_digits"], "pre_tokenizer.pretokenizers[0].individual_digits", default: false) else {
                    throw fail("pre_tokenizer.pretokenizers[0]", "Digits without individual_digits is not supported")
                }
                return Layout(kind: .byteLevelBPE, preTokenizer: .smollm, prefixSpace: .never)
            case "Split" where !useRegex:
                let key = "pre_tokenizer.pretokenizers[0]"
                let pattern = try string(object(first["pattern"], key + ".pattern")["Regex"], key + ".pattern.Regex")
                let behavior = try string(first["behavior"], key + ".behavior")
                guard behavior == "Isolated", try !bool(first["invert"], key + ".invert", default: false) else {
                    throw fail(key, "only behavior Isolated without invert is supported")
                }
                switch pattern {
                case TokenizerSpec.gpt2Pattern: return Layout(kind: .byteLevelBPE, preTokenizer: .gpt2, prefixSpace: .never)
                case TokenizerSpec.llama3Pattern: return Layout(kind: .byteLevelBPE, preTokenizer: .llama3, prefixSpace: .never)
                default: throw fail(key + ".pattern.Regex", "'\(pattern)' is not supported (only the GPT-2 and Llama-3 regexes)")
                }
            default:
                throw unsupportedSequence(steps)
            }
        default:
            throw fail("pre_tokenizer", "'\(type)' is not supported (expected ByteLevel, a Sequence ending in ByteLevel, or Metaspace)")
        }
    }

    private func unsupportedSequence(_ steps: [TokenizerJSONValue]) -> SheafError {
        let names = steps.map { step -> String in
            if case .string(let s)? = step["type"] { s } else { "?" }
        }
        return fail(
            "pre_tokenizer", "Sequence[\(names.joined(separator: ", "))] is not supported "
                + "(expected Digits+ByteLevel or Split(regex)+ByteLevel(use_regex: false))")
    }

    /// BOS/EOS from a TemplateProcessing post-processor's single-sequence template.
    func readTemplate(_ value: TokenizerJSONValue?, _ key: String, idOfToken: [[UInt8]: Int32]) throws(SheafError) -> (Int32?, Int32?) {
        guard let value, !value.isNull else { return (nil, nil) }
        switch try componentType(value, key) {
        case "Sequence":
            var result: (Int32?, Int32?) = (nil, nil)
            for (i, step) in try array(value["processors"], key + ".processors").enumerated() {
                let (bos, eos) = try readTemplate(step, key + ".processors[\(i)]", idOfToken: idOfToken)
                result = (result.0 ?? bos, result.1 ?? eos)
            }
            return result
        case "TemplateProcessing":
            var bos: Int32?
            var eos: Int32?
            var sawSequence = false
            for (i, piece) in try array(value["single"], key + ".single").enumerated() {
                let pieceKey = key + ".single[\(i)]"
                if piece["Sequence"] != nil {
                    sawSequence = true
                    continue
                }
                let name = try string(object(piece["SpecialToken"], pieceKey + ".SpecialToken")["id"], pieceKey + ".SpecialToken.id")
                guard let id = idOfToken[Array(name.utf8)] else { throw fail(pieceKey, "special token '\(name)' is not in the vocabulary") }
                if sawSequence { eos = id } else { bos = id }
            }
            return (bos, eos)
        default:
            return (nil, nil)  // ByteLevel (offsets only) and others add no tokens Sheaf needs.
        }
    }
}

// MARK: - Writing

extension Tokenizer {
    /// The tokenizer.json value for this tokenizer (see `tokenizerJSON()`).
    func tokenizerJSONValue() -> TokenizerJSONValue {
        let spec = self.spec
        func string(_ s: String) -> TokenizerJSONValue { .string(s) }
        func object(_ members: [(String, TokenizerJSONValue)]) -> TokenizerJSONValue {
            .object(members.map { (key: $0.0, value: $0.1) })
        }
        let byteLevel = { (useRegex: Bool, prefix: Bool) in
            object([
                ("type", string("ByteLevel")), ("add_prefix_space", .bool(prefix)), ("trim_offsets", .bool(true)),
                ("use_regex", .bool(useRegex)),
            ])
        }
        var normalizer = TokenizerJSONValue.null
        var preTokenizer = TokenizerJSONValue.null
        var decoder: TokenizerJSONValue
        switch spec.kind {
        case .byteLevelBPE:
            let prefix = spec.prefixSpace != .never
            switch spec.preTokenizer {
            case .gpt2: preTokenizer = byteLevel(true, prefix)
            case .none, .metaspace: preTokenizer = byteLevel(false, prefix)
            case .smollm:
                preTokenizer = object([
                    ("type", string("Sequence")),
                    ("pretokenizers", .array([object([("type", string("Digits")), ("individual_digits", .bool(true))]), byteLevel(true, false)])),
                ])
            case .llama3:
                let split = object([
                    ("type", string("Split")), ("pattern", object([("Regex", string(TokenizerSpec.llama3Pattern))])),
                    ("behavior", string("Isolated")), ("invert", .bool(false)),
                ])
                preTokenizer = object([("type", string("Sequence")), ("pretokenizers", .array([split, byteLevel(false, false)]))])
            }
            decoder = byteLevel(true, true)
        case .sentencePieceBPE:
            if spec.prefixSpace == .everySegmentUnconditional {
                normalizer = object([
                    ("type", string("Sequence")),
                    ("normalizers", .array([
                        object([("type", string("Prepend")), ("prepend", string(TokenizerSpec.metaspace))]),
                        object([("type", string("Replace")), ("pattern", object([("String", string(" "))])), ("content", string(TokenizerSpec.metaspace))]),
                    ])),
                ])
            } else {
                let scheme = switch spec.prefixSpace {
                case .textStart: "first"
                case .everySegment, .everySegmentUnconditional: "always"
                case .never: "never"
                }
                preTokenizer = object([
                    ("type", string("Metaspace")), ("replacement", string(TokenizerSpec.metaspace)),
                    ("prepend_scheme", string(scheme)), ("split", .bool(spec.preTokenizer == .metaspace)),
                ])
            }
            var steps: [TokenizerJSONValue] = [
                object([("type", string("Replace")), ("pattern", object([("String", string(TokenizerSpec.metaspace))])), ("content", string(" "))]),
                object([("type", string("ByteFallback"))]),
                object([("type", string("Fuse"))]),
            ]
            if spec.prefixSpace != .never {
                steps.append(object([("type", string("Strip")), ("content", string(" ")), ("start", .number(1)), ("stop", .number(0))]))
            }
            decoder = object([("type", string("Sequence")), ("decoders", .array(steps))])
        }

        var postProcessor = TokenizerJSONValue.null
        let bos = spec.addBOS ? spec.bosID : nil
        let eos = spec.addEOS ? spec.eosID : nil
        if bos != nil || eos != nil {
            func special(_ id: Int32, _ typeID: Int) -> TokenizerJSONValue {
                object([("SpecialToken", object([("id", string(spec.vocab[Int(id)])), ("type_id", .number(Double(typeID)))]))])
            }
            func sequence(_ name: String, _ typeID: Int) -> TokenizerJSONValue {
                object([("Sequence", object([("id", string(name)), ("type_id", .number(Double(typeID)))]))])
            }
            var single: [TokenizerJSONValue] = []
            var pair: [TokenizerJSONValue] = []
            if let bos { single.append(special(bos, 0)) }
            single.append(sequence("A", 0))
            if let eos { single.append(special(eos, 0)) }
            pair = single
            if let bos { pair.append(special(bos, 1)) }
            pair.append(sequence("B", 1))
            if let eos { pair.append(special(eos, 1)) }
            var specials: [(String, TokenizerJSONValue)] = []
            for id in [bos, eos].compactMap({ $0 }) where !specials.contains(where: { $0.0 == spec.vocab[Int(id)] }) {
                let name = spec.vocab[Int(id)]
                specials.append(
                    (name, object([("id", string(name)), ("ids", .array([.number(Double(id))])), ("tokens", .array([string(name)]))])))
            }
            postProcessor = object([
                ("type", string("TemplateProcessing")), ("single", .array(single)), ("pair", .array(pair)),
                ("special_tokens", object(specials)),
            ])
        }

        let added = spec.addedTokens.map { token in
            object([
                ("id", .number(Double(token.id))), ("content", string(spec.vocab[Int(token.id)])),
                ("single_word", .bool(false)), ("lstrip", .bool(token.lstrip)), ("rstrip", .bool(token.rstrip)),
                ("normalized", .bool(false)), ("special", .bool(token.special)),
            ])
        }
        let vocab = spec.vocab.enumerated().map { (key: $0.element, value: TokenizerJSONValue.number(Double($0.offset))) }
        // "left right" strings when no token has a space (readable by every tokenizers version), else pairs.
        let spaceFree = !effectiveMerges.contains { $0.0.utf8.contains(0x20) || $0.1.utf8.contains(0x20) }
        let merges = effectiveMerges.map { merge -> TokenizerJSONValue in
            spaceFree ? .string(merge.0 + " " + merge.1) : .array([.string(merge.0), .string(merge.1)])
        }
        let model = object([
            ("type", string("BPE")), ("dropout", .null),
            ("unk_token", spec.unknownID.map { string(spec.vocab[Int($0)]) } ?? .null),
            ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null),
            ("fuse_unk", .bool(spec.fuseUnknown)), ("byte_fallback", .bool(spec.byteFallback)),
            ("ignore_merges", .bool(spec.ignoreMerges)), ("vocab", .object(vocab)), ("merges", .array(merges)),
        ])
        return object([
            ("version", string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", .array(added)),
            ("normalizer", normalizer), ("pre_tokenizer", preTokenizer), ("post_processor", postProcessor),
            ("decoder", decoder), ("model", model),
        ])
    }
}
