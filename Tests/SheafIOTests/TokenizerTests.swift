import Foundation
import SheafCore
import SheafIO
import Testing

/// Golden ids from HuggingFace `tokenizers` 0.23.3 (scripts/tokenizer_golden.py): the SmolLM2
/// tokenizer rebuilt as tokenizer.json from the GGUF's metadata, under three pre-tokenizers
/// (SmolLM's own, plain GPT-2 and Llama-3, the last two to exercise every regex scanner on real
/// text). Digest: sha256 of the ids as little-endian uint32. Only digests, lengths and short
/// cases are committed; the model comes from scripts/fixtures.
enum TokenizerGolden {
    struct TextDigest: Sendable {
        var count: Int
        var sha256: String
    }

    enum Variant: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case smollm, gpt2, llama3
        var testDescription: String { rawValue }
        /// The `tokenizer.ggml.pre` name that selects this pre-tokenizer.
        var ggufPre: String {
            switch self {
            case .smollm: "smollm"
            case .gpt2: "gpt2"
            case .llama3: "llama-bpe"
            }
        }
    }

    static let digests: [Variant: (wiki: TextDigest, austen: TextDigest, unicode: TextDigest)] = [
        .smollm: (
            TextDigest(count: 304_830, sha256: "f1fc968436f59cc521729ce7380120ad247797684b8eb530062c486b00d9bc13"),
            TextDigest(count: 221_850, sha256: "2694cdf2866d769307edb867ca7bf1fbf5c4aa953879405c19bc62214c8f4d42"),
            TextDigest(count: 125_746, sha256: "8a156f2182a70d8f6995d586cc310490b9c858f178b9f7afdc54de8999b50b36")
        ),
        .gpt2: (
            TextDigest(count: 304_839, sha256: "226892d5830b1c47e5133f73cf57c1aaf97344d23076ee0ca83ae5897b3893dd"),
            TextDigest(count: 221_850, sha256: "2694cdf2866d769307edb867ca7bf1fbf5c4aa953879405c19bc62214c8f4d42"),
            TextDigest(count: 125_732, sha256: "25b11bcda76ef8145ad0952f907bf8acf3c4d3a6f71c35ea599bd7751dd52cf9")
        ),
        .llama3: (
            TextDigest(count: 304_839, sha256: "aa3cf93e2732ed8ec7e0719ca18cabb4c20a569d782341ea045d5ba896c75526"),
            TextDigest(count: 219_548, sha256: "4486086072a9d0026d8b3e61dcb9ece06f61614784cade761a2a1d23b4f2c5fa"),
            TextDigest(count: 125_747, sha256: "c467fda794e91fdf1de6e9a765a1b6c42d6c632284ac4c8fe09915854e2d4faf")
        ),
    ]

    /// Short cases under the smollm pre-tokenizer.
    static let cases: [(text: String, ids: [Int32])] = [
        ("Hello world", [19556, 905]),
        ("In 1984, 12345 people paid $3.50 each.", [788, 216, 33, 41, 40, 36, 28, 216, 33, 34, 35, 36, 37, 701, 5940, 1885, 35, 30, 37, 32, 971, 30]),
        ("a  b   c    d\n\n\ne\t\tf  \n  g", [81, 216, 278, 256, 265, 333, 287, 1116, 198, 85, 197, 197, 86, 256, 3805, 310]),
        ("I'm sure they'll say it's what we'd've done. DON'T SHOUT'S", [57, 5248, 2090, 502, 3060, 1643, 357, 506, 732, 392, 6737, 3543, 2294, 30, 422, 2154, 23, 68, 334, 21953, 23, 67]),
        ("na\u{EF}ve caf\u{E9}, \u{395}\u{3BB}\u{3BB}\u{3B7}\u{3BD}\u{3B9}\u{3BA}\u{3AC}, \u{440}\u{443}\u{441}\u{441}\u{43A}\u{438}\u{439}, \u{65E5}\u{672C}\u{8A9E}\u{306E}\u{30C6}\u{30AD}\u{30B9}\u{30C8}, \u{D55C}\u{AD6D}\u{C5B4}", [3546, 46494, 37366, 28, 5664, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 28, 216, 9175, 14714, 9382, 39511, 7872, 24958, 28, 17097, 241, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 28, 216, 33085, 246, 181, 130, 251, 183, 240, 129]),
        ("emoji: \u{1F600}\u{1F44D}\u{1F3FD} and flags \u{1F1EB}\u{1F1F7} ZWJ \u{1F469}\u{200D}\u{1F4BB}", [391, 33777, 42, 40303, 218, 10813, 235, 231, 10813, 233, 138, 284, 13198, 15107, 225, 121, 10813, 225, 132, 1777, 71, 58, 15107, 235, 119, 321, 231, 10813, 236, 136]),
        ("<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n", [1, 4093, 198, 26843, 665, 17, 2, 198, 1, 520, 9531, 198]),
        ("   leading and trailing   ", [256, 2899, 284, 35079, 333]),
        ("x<|endoftext|>y <|im_end|>  z", [104, 0, 105, 216, 2, 216, 1892]),
        ("\u{A0}nbsp\u{2003}em-space\u{3000}ideographic\u{2028}line", [15442, 94, 32093, 321, 221, 391, 29, 11602, 12109, 218, 489, 4551, 321, 118, 1311]),
        ("\u{663}\u{664} \u{BD} \u{216B} \u{2460}\u{2461}", [164, 113, 164, 114, 216, 16738, 216, 173, 223, 121, 216, 173, 235, 250, 173, 235, 111]),
        ("", []),
    ]

    /// Where the other pre-tokenizers give other ids than smollm: index into `cases` -> ids.
    static let caseOverrides: [Variant: [Int: [Int32]]] = [
        .smollm: [:],
        // Without the digit split, " ½" and " Ⅻ" keep their space.
        .gpt2: [10: [164, 113, 164, 114, 3351, 138, 4636, 223, 121, 4636, 235, 250, 173, 235, 111]],
        // `\s*[\r\n]+` keeps "\n\n\n" and " \n" whole.
        .llama3: [2: [81, 216, 278, 256, 265, 333, 287, 16506, 85, 197, 197, 86, 32057, 216, 310]],
    ]

    static func cases(_ variant: Variant) -> [(text: String, ids: [Int32])] {
        cases.enumerated().map { (i, c) in (c.text, caseOverrides[variant]?[i] ?? c.ids) }
    }

    /// Every 7th scalar from U+0020 to U+2FFFF (surrogates skipped), each after one of
    /// "a", " ", "1", "\n", "'", so that every class meets every regex rule. Same as the script.
    static let unicodeStress: String = {
        let prefixes = ["a", " ", "1", "\n", "'"]
        var s = ""
        for (i, code) in stride(from: 0x20, to: 0x30000, by: 7).enumerated() {
            guard let scalar = Unicode.Scalar(UInt32(code)) else { continue }
            s += prefixes[i % 5]
            s.unicodeScalars.append(scalar)
        }
        return s
    }()
}

/// Paths of the reference model and texts (as scripts/fixtures lays them out).
enum TokenizerFixtures {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static var cache: String {
        ProcessInfo.processInfo.environment["SHEAF_CACHE"] ?? (NSHomeDirectory() + "/.cache/sheaf")
    }
    static var modelPath: String { cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf" }
    static var dataRoot: String { ProcessInfo.processInfo.environment["SHEAF_DATA"] ?? (repoRoot + "/../shared/data") }

    struct Missing: Error, CustomStringConvertible {
        let description: String
    }

    static func text(_ relative: String) throws -> String {
        let path = dataRoot + "/" + relative
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Missing(description: "\(path) is missing: run scripts/fixtures")
        }
        guard let text = String(validating: data, as: UTF8.self) else { throw Missing(description: "\(path) is not UTF-8") }
        return text
    }

    static func wiki() throws -> String { try text("wikitext-2-raw/wiki.test.raw") }

    /// The first Austen novel in sorted order, as the script picks it.
    static func austen() throws -> String {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dataRoot + "/austen")) ?? []
        guard let first = names.filter({ $0.hasSuffix(".txt") }).sorted().first else {
            throw Missing(description: "\(dataRoot)/austen has no .txt files: run scripts/fixtures")
        }
        return try text("austen/" + first)
    }

    /// The tokenizer.* metadata of the reference GGUF, read once.
    static let smolLM: Result<GGUFTokenizerMetadata, Missing> = {
        guard FileManager.default.fileExists(atPath: modelPath) else {
            return .failure(Missing(description: "\(modelPath) is missing: run scripts/fixtures"))
        }
        do { return .success(try GGUFTokenizerMetadata(path: modelPath)) } catch {
            return .failure(Missing(description: "cannot read \(modelPath): \(error)"))
        }
    }()

    static func spec(_ variant: TokenizerGolden.Variant) throws -> TokenizerSpec {
        let m = try smolLM.get()
        return try TokenizerSpec.fromGGUFFields(
            model: m.string("tokenizer.ggml.model") ?? "", pre: variant.ggufPre, tokens: m.strings("tokenizer.ggml.tokens") ?? [],
            merges: m.strings("tokenizer.ggml.merges"), tokenTypes: m.int32s("tokenizer.ggml.token_type"),
            scores: m.floats("tokenizer.ggml.scores"), bos: m.int("tokenizer.ggml.bos_token_id"),
            eos: m.int("tokenizer.ggml.eos_token_id"), unk: m.int("tokenizer.ggml.unknown_token_id"),
            addBOS: m.bool("tokenizer.ggml.add_bos_token"))
    }

    static func tokenizer(_ variant: TokenizerGolden.Variant) throws -> Tokenizer { try Tokenizer(spec: spec(variant)) }

    static func digest(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids { withUnsafeBytes(of: UInt32(bitPattern: id).littleEndian) { bytes += $0 } }
        return SHA256.hex(bytes)
    }

    static func temporaryPath(_ name: String) -> String {
        NSTemporaryDirectory() + "/sheaf-tokenizer-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString)-\(name)"
    }
}

/// Just enough of GGUF to read the metadata: header, then key/value pairs (test-only, so the
/// tokenizer tests do not depend on SheafIO's GGUF reader).
struct GGUFTokenizerMetadata {
    enum Value {
        case int(Int), float(Float), bool(Bool), string(String)
        case array([Value])
    }

    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    private(set) var values: [String: Value] = [:]

    init(path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        values = try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws -> [String: Value] in
            var cursor = Cursor(bytes: raw)
            guard try cursor.bytes(4) == Array("GGUF".utf8) else { throw Malformed(description: "not a GGUF file") }
            guard try cursor.u32() == 3 else { throw Malformed(description: "not GGUF version 3") }
            _ = try cursor.u64()  // tensor count
            let kvCount = try cursor.u64()
            var values: [String: Value] = [:]
            for _ in 0..<kvCount {
                let key = try cursor.string()
                values[key] = try cursor.value(type: cursor.u32())
            }
            return values
        }
    }

    func string(_ key: String) -> String? { if case .string(let s)? = values[key] { s } else { nil } }
    func int(_ key: String) -> Int? { if case .int(let i)? = values[key] { i } else { nil } }
    func bool(_ key: String) -> Bool? { if case .bool(let b)? = values[key] { b } else { nil } }
    private func array(_ key: String) -> [Value]? { if case .array(let a)? = values[key] { a } else { nil } }
    func strings(_ key: String) -> [String]? {
        array(key)?.compactMap { if case .string(let s) = $0 { s } else { nil } }
    }
    func int32s(_ key: String) -> [Int32]? { array(key)?.compactMap { if case .int(let i) = $0 { Int32(i) } else { nil } } }
    func floats(_ key: String) -> [Float]? { array(key)?.compactMap { if case .float(let f) = $0 { f } else { nil } } }

    private struct Cursor {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        mutating func bytes(_ n: Int) throws -> [UInt8] {
            guard n >= 0, offset + n <= bytes.count else { throw Malformed(description: "truncated at byte \(offset)") }
            defer { offset += n }
            return Array(bytes[offset..<offset + n])
        }

        mutating func load<T: FixedWidthInteger>(_: T.Type) throws -> T {
            guard offset + MemoryLayout<T>.size <= bytes.count else { throw Malformed(description: "truncated at byte \(offset)") }
            defer { offset += MemoryLayout<T>.size }
            return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }

        mutating func u32() throws -> UInt32 { try load(UInt32.self) }
        mutating func u64() throws -> UInt64 { try load(UInt64.self) }
        mutating func string() throws -> String { String(decoding: try bytes(Int(u64())), as: UTF8.self) }

        mutating func value(type: UInt32) throws -> Value {
            switch type {
            case 0: .int(Int(try load(UInt8.self)))
            case 1: .int(Int(try load(Int8.self)))
            case 2: .int(Int(try load(UInt16.self)))
            case 3: .int(Int(try load(Int16.self)))
            case 4: .int(Int(try load(UInt32.self)))
            case 5: .int(Int(try load(Int32.self)))
            case 6: .float(Float(bitPattern: try load(UInt32.self)))
            case 7: .bool(try load(UInt8.self) != 0)
            case 8: .string(try string())
            case 9:
                try {
                    let elementType = try u32()
                    let count = try u64()
                    guard count <= UInt64(bytes.count) else { throw Malformed(description: "array of \(count) elements") }
                    var elements: [Value] = []
                    elements.reserveCapacity(Int(count))
                    for _ in 0..<count { elements.append(try value(type: elementType)) }
                    return .array(elements)
                }()
            case 10: .int(Int(truncatingIfNeeded: try load(UInt64.self)))
            case 11: .int(Int(try load(Int64.self)))
            case 12: .float(Float(Double(bitPattern: try load(UInt64.self))))
            default: throw Malformed(description: "unknown value type \(type) at byte \(offset)")
            }
        }
    }
}

// MARK: - Reference model: ids equal HF tokenizers

@Suite struct TokenizerGoldenTests {
    @Test(arguments: TokenizerGolden.Variant.allCases)
    func shortCasesMatchHuggingFace(_ variant: TokenizerGolden.Variant) throws {
        let tokenizer = try TokenizerFixtures.tokenizer(variant)
        for (text, expected) in TokenizerGolden.cases(variant) {
            let ids = tokenizer.encode(text)
            #expect(ids == expected, "\(variant): \(text.debugDescription)")
            #expect(tokenizer.decode(ids) == text, "decode(encode(\(text.debugDescription)))")
        }
    }

    @Test(arguments: TokenizerGolden.Variant.allCases)
    func corporaMatchHuggingFace(_ variant: TokenizerGolden.Variant) throws {
        let tokenizer = try TokenizerFixtures.tokenizer(variant)
        let golden = try #require(TokenizerGolden.digests[variant])
        for (name, text, want) in [
            ("wiki.test.raw", try TokenizerFixtures.wiki(), golden.wiki),
            ("austen", try TokenizerFixtures.austen(), golden.austen),
            ("unicode stress", TokenizerGolden.unicodeStress, golden.unicode),
        ] {
            let ids = tokenizer.encode(text)
            #expect(ids.count == want.count, "\(variant) \(name): \(ids.count) ids")
            #expect(TokenizerFixtures.digest(ids) == want.sha256, "\(variant) \(name)")
            if name != "unicode stress" { #expect(tokenizer.decode(ids) == text, "\(variant) \(name) round trip") }
        }
    }

    /// The GGUF-built tokenizer written as tokenizer.json and read back gives the same ids.
    @Test(arguments: [TokenizerGolden.Variant.smollm, .llama3])
    func tokenizerJSONRoundTrip(_ variant: TokenizerGolden.Variant) throws {
        let original = try TokenizerFixtures.tokenizer(variant)
        let path = TokenizerFixtures.temporaryPath("tokenizer.json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try original.writeTokenizerJSON(to: path)
        let loaded = try Tokenizer.load(tokenizerJSON: path)
        #expect(loaded.vocabularySize == original.vocabularySize)
        #expect(loaded.spec.preTokenizer == original.spec.preTokenizer)
        #expect(loaded.spec.ignoreMerges == (variant == .llama3))
        #expect(loaded.spec.addedTokens == original.spec.addedTokens)
        for (text, expected) in TokenizerGolden.cases(variant) {
            #expect(loaded.encode(text) == expected, "\(variant): \(text.debugDescription)")
        }
        let wiki = try TokenizerFixtures.wiki()
        let golden = try #require(TokenizerGolden.digests[variant]).wiki
        #expect(TokenizerFixtures.digest(loaded.encode(wiki)) == golden.sha256)
        // Writing again gives the same bytes: nothing is lost or reordered by a round trip.
        #expect(loaded.tokenizerJSON() == original.tokenizerJSON())
    }

    @Test func specialTokensAndSpecFromGGUF() throws {
        let tokenizer = try TokenizerFixtures.tokenizer(.smollm)
        #expect(tokenizer.vocabularySize == 49_152)
        #expect(tokenizer.bosID == 1 && tokenizer.eosID == 2)
        #expect(tokenizer.spec.addedTokens.count == 17 && tokenizer.spec.addedTokens.allSatisfy(\.special))
        #expect(tokenizer.spec.merges.count == 48_900)
        // SmolLM2 adds no BOS (tokenizer.ggml.add_bos_token = false).
        #expect(tokenizer.encode("Hi", addSpecial: true) == tokenizer.encode("Hi"))
        let chat = tokenizer.encode("<|im_start|>user\nHi<|im_end|>")
        #expect(chat.first == 1 && chat.last == 2)
        #expect(tokenizer.decode(chat, skipSpecial: true) == "user\nHi")
        // Out-of-range ids are skipped, not a crash.
        #expect(tokenizer.decode([-1, 19556, 1_000_000]) == "Hello")
        // A partial UTF-8 sequence decodes to U+FFFD.
        let clef = tokenizer.encode("\u{1D11E}")
        #expect(clef.count > 1 && tokenizer.decode(Array(clef.prefix(1))) == "\u{FFFD}")
    }

    @Test func concurrentEncodesAgree() async throws {
        let tokenizer = try TokenizerFixtures.tokenizer(.smollm)
        let text = String(try TokenizerFixtures.austen().prefix(50_000))
        let expected = tokenizer.encode(text)
        let results = await withTaskGroup(of: [Int32].self) { group in
            for _ in 0..<4 { group.addTask { tokenizer.encode(text) } }
            return await group.reduce(into: [[Int32]]()) { $0.append($1) }
        }
        #expect(results.count == 4 && results.allSatisfy { $0 == expected })
    }

    /// Prints the time to build the tokenizer and to encode wiki.test.raw (about 1.3 MB);
    /// a benchmark, so no assertion on the times.
    @Test func encodeSpeed() throws {
        let spec = try TokenizerFixtures.spec(.smollm)
        let wiki = try TokenizerFixtures.wiki()
        let buildStart = monotonicSeconds()
        let tokenizer = try Tokenizer(spec: spec)
        let start = monotonicSeconds()
        let ids = tokenizer.encode(wiki)
        let seconds = monotonicSeconds() - start
        let megabytes = Double(wiki.utf8.count) / 1e6
        print(
            String(
                format: "tokenizer: built in %.3f s; encoded wiki.test.raw (%.2f MB, %d ids) in %.3f s, %.1f MB/s",
                start - buildStart, megabytes, ids.count, seconds, megabytes / seconds))
        #expect(ids.count == TokenizerGolden.digests[.smollm]?.wiki.count)
    }
}

// MARK: - SentencePiece style (tiny hand-made tokenizer.json; ids from HF tokenizers)

enum SentencePieceFixture {
    enum Variant: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// Metaspace, prepend_scheme first, split false, byte fallback (Mistral / newer Llama-2 files).
        case metaspaceFirst
        /// Metaspace always + split, no byte fallback: unknown scalars fuse into one <unk>.
        case metaspaceAlwaysSplit
        /// normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer (the Llama-2 hub file).
        case legacyNormalizer
        var testDescription: String { rawValue }
    }

    static let pieces = [
        "▁", "t", "h", "e", "a", "c", "s", "o", "n", "l", "w", "r", "d", "i", "é", "▁t", "he", "▁the", "at", "▁c", "▁cat",
        "on", "▁on", "▁s", "▁sat", "▁w", "or", "ld", "▁wor", "▁world", "in",
    ]
    static let merges = [
        ("▁", "t"), ("h", "e"), ("▁t", "he"), ("a", "t"), ("▁", "c"), ("▁c", "at"), ("o", "n"), ("▁", "on"), ("▁", "s"),
        ("▁s", "at"), ("▁", "w"), ("o", "r"), ("l", "d"), ("▁w", "or"), ("▁wor", "ld"), ("i", "n"),
    ]

    /// The same JSON as `scripts/tokenizer_golden.py --spm` builds for each variant.
    static func json(_ variant: Variant) -> String {
        let vocab = ["<unk>", "<s>", "</s>"] + (0..<256).map { b in "<0x" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true) + ">" } + pieces
        let vocabJSON = vocab.enumerated().map { "\"\($0.element)\": \($0.offset)" }.joined(separator: ", ")
        let mergesJSON = merges.map { "[\"\($0.0)\", \"\($0.1)\"]" }.joined(separator: ", ")
        let special = { (id: Int, content: String) in
            "{\"id\": \(id), \"content\": \"\(content)\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}"
        }
        let (normalizer, preTokenizer, byteFallback): (String, String, Bool) =
            switch variant {
            case .metaspaceFirst:
                ("null", #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}"#, true)
            case .metaspaceAlwaysSplit:
                ("null", #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}"#, false)
            case .legacyNormalizer:
                (
                    #"{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}"#,
                    "null", true
                )
            }
        return """
            {"version": "1.0", "truncation": null, "padding": null,
             "added_tokens": [\(special(0, "<unk>")), \(special(1, "<s>")), \(special(2, "</s>"))],
             "normalizer": \(normalizer), "pre_tokenizer": \(preTokenizer),
             "post_processor": {"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
             "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
             "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
               "fuse_unk": true, "byte_fallback": \(byteFallback), "ignore_merges": false,
               "vocab": {\(vocabJSON)}, "merges": [\(mergesJSON)]}}
            """
    }

    /// (text, ids without BOS, HF decode of those ids); with BOS the ids gain a leading 1.
    static let expected: [Variant: [(text: String, ids: [Int32], decoded: String)]] = [
        .metaspaceFirst: [
            ("the cat sat on the world", [276, 279, 283, 281, 276, 288], "the cat sat on the world"),
            ("The Cat", [259, 87, 275, 259, 70, 277], "The Cat"),
            ("  the  cat ", [259, 276, 259, 279, 259], " the  cat "),
            ("café über 😀", [278, 263, 105, 273, 259, 198, 191, 101, 262, 270, 259, 243, 162, 155, 131], "café über 😀"),
            ("in<s>the</s> cat", [259, 289, 1, 260, 275, 2, 279], "in<s>the</s> cat"),
            ("\n", [259, 13], "\n"),
            ("", [], ""),
            ("<s> the ÜÜ cat", [1, 276, 259, 198, 159, 198, 159, 279], "<s> the ÜÜ cat"),
        ],
        .metaspaceAlwaysSplit: [
            ("the cat sat on the world", [276, 279, 283, 281, 276, 288], "the cat sat on the world"),
            ("The Cat", [259, 0, 275, 259, 0, 277], "<unk>he <unk>at"),
            ("  the  cat ", [259, 276, 259, 279, 259], " the  cat "),
            ("café über 😀", [278, 263, 0, 273, 259, 0, 262, 270, 259, 0], "ca<unk>é <unk>er <unk>"),
            ("in<s>the</s> cat", [259, 289, 1, 276, 2, 279], "in<s> the</s> cat"),
            ("\n", [259, 0], "<unk>"),
            ("", [], ""),
            ("<s> the ÜÜ cat", [1, 276, 259, 0, 279], "<s> the <unk> cat"),
        ],
        .legacyNormalizer: [
            ("the cat sat on the world", [276, 279, 283, 281, 276, 288], "the cat sat on the world"),
            ("The Cat", [259, 87, 275, 259, 70, 277], "The Cat"),
            ("  the  cat ", [259, 259, 276, 259, 279, 259], "  the  cat "),
            ("café über 😀", [278, 263, 105, 273, 259, 198, 191, 101, 262, 270, 259, 243, 162, 155, 131], "café über 😀"),
            ("in<s>the</s> cat", [259, 289, 1, 276, 2, 259, 279], "in<s> the</s>  cat"),
            ("\n", [259, 13], "\n"),
            ("", [], ""),
            ("<s> the ÜÜ cat", [1, 259, 276, 259, 198, 159, 198, 159, 279], "<s>  the ÜÜ cat"),
        ],
    ]

    static func load(_ variant: Variant) throws -> Tokenizer {
        let path = TokenizerFixtures.temporaryPath("spm-\(variant).json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(json(variant).utf8).write(to: URL(fileURLWithPath: path))
        return try Tokenizer.load(tokenizerJSON: path)
    }
}

@Suite struct SentencePieceTokenizerTests {
    @Test(arguments: SentencePieceFixture.Variant.allCases)
    func matchesHuggingFace(_ variant: SentencePieceFixture.Variant) throws {
        let tokenizer = try SentencePieceFixture.load(variant)
        #expect(tokenizer.spec.kind == .sentencePieceBPE)
        #expect(tokenizer.bosID == 1 && tokenizer.spec.addBOS)
        for (text, ids, decoded) in try #require(SentencePieceFixture.expected[variant]) {
            #expect(tokenizer.encode(text) == ids, "\(variant): \(text.debugDescription)")
            #expect(tokenizer.encode(text, addSpecial: true) == [1] + ids, "\(variant) with BOS: \(text.debugDescription)")
            #expect(tokenizer.decode(ids) == decoded, "\(variant) decode: \(text.debugDescription)")
        }
    }

    /// Written back as tokenizer.json and read again, each variant keeps its layout and ids.
    @Test(arguments: SentencePieceFixture.Variant.allCases)
    func tokenizerJSONRoundTrip(_ variant: SentencePieceFixture.Variant) throws {
        let original = try SentencePieceFixture.load(variant)
        let path = TokenizerFixtures.temporaryPath("spm-roundtrip.json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try original.writeTokenizerJSON(to: path)
        let loaded = try Tokenizer.load(tokenizerJSON: path)
        #expect(loaded.spec.prefixSpace == original.spec.prefixSpace)
        #expect(loaded.spec.preTokenizer == original.spec.preTokenizer)
        #expect(loaded.spec.byteFallback == original.spec.byteFallback)
        for (text, ids, decoded) in try #require(SentencePieceFixture.expected[variant]) {
            #expect(loaded.encode(text, addSpecial: true) == [1] + ids, "\(variant): \(text.debugDescription)")
            #expect(loaded.decode(ids) == decoded)
        }
    }

    /// llama.cpp's SentencePiece GGUFs carry scores instead of merges; merges are derived as
    /// HF's converter does (best-scoring merged token first).
    @Test func scoresFromGGUF() throws {
        let bytes = (0..<256).map { b in "<0x" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true) + ">" }
        let pieces = ["▁", "a", "b", "c", "ab", "bc", "▁a", "abc", "▁abc"]
        let tokens = ["<unk>", "<s>", "</s>"] + bytes + pieces
        let pieceScores: [Float] = [-1, -2, -3, -4, -5, -6, -7, -8, -9]
        let types = [Int32(2), 3, 3] + [Int32](repeating: 6, count: 256) + [Int32](repeating: 1, count: pieces.count)
        let spec = try TokenizerSpec.fromGGUFFields(
            model: "llama", pre: nil, tokens: tokens, merges: nil, tokenTypes: types,
            scores: [0, 0, 0] + [Float](repeating: 0, count: 256) + pieceScores, bos: 1, eos: 2, unk: 0, addBOS: nil)
        let tokenizer = try Tokenizer(spec: spec)
        let id = { (piece: String) in Int32(tokens.firstIndex(of: piece) ?? -1) }
        // Derived merges, best first: (a b) -5, (b c) -6, (▁ a) -7, (ab c) -8, (a bc) -8, (▁a bc) -9,
        // (▁ abc) -9; within a score the longer left part first.
        // "▁abc": ▁ a b c -> ▁ ab c -> ▁ abc -> ▁abc.
        #expect(tokenizer.encode("abc") == [id("▁abc")])
        #expect(tokenizer.encode("abc", addSpecial: true) == [1, id("▁abc")])  // llama GGUFs add BOS by default
        // "▁cab": ▁ c a b -> ▁ c ab (no merge makes ▁c, ca or cab).
        #expect(tokenizer.encode("cab") == [id("▁"), id("c"), id("ab")])
        // A scalar outside the vocabulary falls back to its bytes.
        #expect(tokenizer.encode("a\u{E9}") == [id("▁a"), id("<0xC3>"), id("<0xA9>")])
        #expect(tokenizer.decode(tokenizer.encode("cab a\u{E9}")) == "cab a\u{E9}")
        // Exported as tokenizer.json, the derived merges come along.
        let path = TokenizerFixtures.temporaryPath("scores.json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try tokenizer.writeTokenizerJSON(to: path)
        let loaded = try Tokenizer.load(tokenizerJSON: path)
        #expect(loaded.spec.merges.count == 7)
        #expect(loaded.encode("abc cab", addSpecial: true) == tokenizer.encode("abc cab", addSpecial: true))
    }
}

// MARK: - Bad input: one clear error naming the file and key

@Suite struct TokenizerBadInputTests {
    func loadError(_ json: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let path = TokenizerFixtures.temporaryPath("bad.json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(json).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Tokenizer.load(tokenizerJSON: path)
            Issue.record("loaded without an error", sourceLocation: sourceLocation)
            return ""
        } catch {
            guard case .io(let errorPath, _) = error else {
                Issue.record("expected .io, got \(error)", sourceLocation: sourceLocation)
                return ""
            }
            #expect(errorPath == path, sourceLocation: sourceLocation)
            #expect(!error.description.contains("\n"), "one line", sourceLocation: sourceLocation)
            return error.description
        }
    }

    func loadError(_ json: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        try loadError(Array(json.utf8), sourceLocation: sourceLocation)
    }

    static let minimalModel = #""model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}"#

    @Test func minimalByteLevelFileLoads() throws {
        let path = TokenizerFixtures.temporaryPath("ok.json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(#"{"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}, \#(Self.minimalModel)}"#.utf8)
            .write(to: URL(fileURLWithPath: path))
        let tokenizer = try Tokenizer.load(tokenizerJSON: path)
        #expect(tokenizer.encode("ab") == [2])
        #expect(tokenizer.encode("abba") == [2, 1, 0])
    }

    @Test func malformedFiles() throws {
        #expect(try loadError("{\"model\": ").contains("not valid JSON"))
        #expect(try loadError("[1, 2]").contains("top level"))
        #expect(try loadError([0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D]).contains("not valid UTF-8"))
        #expect(try loadError(#"{"pre_tokenizer": null}"#).contains("model: missing"))
        #expect(try loadError(#"{"model": {"type": "Unigram", "vocab": []}}"#).contains("model.type: 'Unigram' is not supported"))
        #expect(try loadError(#"{"model": {"type": "BPE", "vocab": [1], "merges": []}}"#).contains("model.vocab: expected an object, found an array"))
        #expect(try loadError(#"{"model": {"vocab": {"a": "zero"}, "merges": []}}"#).contains("model.vocab[\"a\"]: expected a token id"))
        #expect(try loadError(#"{"model": {"vocab": {"a": 0, "b": 2}, "merges": []}}"#).contains("no token has id 1"))
        #expect(try loadError(#"{"model": {"vocab": {"a": 0}, "merges": [5]}}"#).contains("model.merges[0]"))
        let missingMerged = #"{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}"#
        #expect(try loadError(missingMerged).contains("'ab' is not in the vocabulary"))
        #expect(try loadError(#"{"pre_tokenizer": {"type": "Whitespace"}, \#(Self.minimalModel)}"#).contains("pre_tokenizer: 'Whitespace' is not supported"))
        #expect(try loadError(#"{"normalizer": {"type": "NFKC"}, \#(Self.minimalModel)}"#).contains("normalizer 'NFKC' is not supported"))
        let unknownRegex = #"{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}, \#(Self.minimalModel)}"#
        #expect(try loadError(unknownRegex).contains("is not supported (only the GPT-2 and Llama-3 regexes)"))
        let badAdded = #"{"pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": [{"id": 0, "content": "zz"}], \#(Self.minimalModel)}"#
        #expect(try loadError(badAdded).contains("added_tokens[0]: content 'zz' differs"))
    }

    @Test func missingFile() {
        let path = TokenizerFixtures.temporaryPath("absent.json")
        #expect(throws: SheafError.self) { try Tokenizer.load(tokenizerJSON: path) }
        do { _ = try Tokenizer.load(tokenizerJSON: path) } catch {
            #expect(error.description.hasPrefix(path + ": cannot read"))
        }
    }

    /// The error `fromGGUFFields` gives for three tokens "a", "b", "ab" and these fields.
    func ggufError(
        model: String = "gpt2", pre: String? = "smollm", merges: [String]? = ["a b"], tokenTypes: [Int32]? = nil,
        bos: Int? = nil
    ) -> String {
        do {
            _ = try TokenizerSpec.fromGGUFFields(
                model: model, pre: pre, tokens: ["a", "b", "ab"], merges: merges, tokenTypes: tokenTypes, scores: nil,
                bos: bos, eos: nil, unk: nil, addBOS: nil)
        } catch {
            return error.description
        }
        return ""
    }

    @Test func badGGUFFields() {
        #expect(ggufError(pre: "falcon").contains("tokenizer.ggml.pre 'falcon' is not supported"))
        #expect(ggufError(model: "bert").contains("tokenizer.ggml.model 'bert' is not supported"))
        #expect(ggufError(tokenTypes: [1, 1]).contains("tokenizer.ggml.token_type has 2 entries for 3 tokens"))
        #expect(ggufError(tokenTypes: [1, 9, 1]).contains("tokenizer.ggml.token_type[1] is 9"))
        #expect(ggufError(merges: ["ab"]).contains("tokenizer.ggml.merges[0] 'ab' is not two tokens"))
        #expect(ggufError(merges: nil).contains("tokenizer.ggml.merges is missing"))
        #expect(ggufError(bos: 7).contains("tokenizer.ggml.bos_token_id 7 is outside the 3-token vocabulary"))
        #expect(ggufError() == "")
    }
}
