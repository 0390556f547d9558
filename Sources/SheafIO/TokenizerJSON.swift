import SheafCore

/// A parsed JSON value for tokenizer.json files.
///
/// A hand-written parser rather than JSONSerialization: objects keep every key in file order as
/// exact Unicode scalars. Swift dictionaries keyed by `String` compare keys by canonical
/// equivalence, so two vocabulary entries that differ only in Unicode normalisation
/// ("é" vs "e\u{301}") would silently collapse into one.
indirect enum TokenizerJSONValue: Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([TokenizerJSONValue])
    case object([(key: String, value: TokenizerJSONValue)])

    /// The first value stored under `key`, for objects; nil otherwise.
    subscript(key: String) -> TokenizerJSONValue? {
        guard case .object(let members) = self else { return nil }
        let wanted = Array(key.utf8)
        return members.first { $0.key.utf8.elementsEqual(wanted) }?.value
    }

    var isNull: Bool {
        if case .null = self { true } else { false }
    }

    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// Recursive-descent parser over UTF-8 bytes (RFC 8259). Errors carry the byte offset.
struct TokenizerJSONParser {
    private let bytes: [UInt8]
    private var position = 0
    private var depth = 0
    /// Nesting deeper than this is refused rather than risking the stack: tokenizer.json nests ~6 deep.
    static let maxDepth = 512

    struct Failure: Error {
        let message: String
    }

    static func parse(_ bytes: [UInt8]) throws(Failure) -> TokenizerJSONValue {
        var parser = TokenizerJSONParser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.parseValue()
        parser.skipWhitespace()
        guard parser.position == bytes.count else { throw parser.failure("unexpected data after the top-level value") }
        return value
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private func failure(_ message: String) -> Failure { Failure(message: "\(message) at byte \(position)") }

    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(Failure) {
        let count = literal.utf8CodeUnitCount
        let matches = literal.withUTF8Buffer { want in
            position + count <= bytes.count && (0..<count).allSatisfy { bytes[position + $0] == want[$0] }
        }
        guard matches else { throw failure("invalid literal (expected \(literal))") }
        position += count
    }

    private mutating func parseValue() throws(Failure) -> TokenizerJSONValue {
        guard position < bytes.count else { throw failure("unexpected end of input") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw failure("unexpected character '\(Unicode.Scalar(bytes[position]))'")
        }
    }

    private mutating func enter() throws(Failure) {
        depth += 1
        guard depth <= Self.maxDepth else { throw failure("nesting deeper than \(Self.maxDepth) levels") }
    }

    private mutating func parseObject() throws(Failure) -> TokenizerJSONValue {
        try enter()
        defer { depth -= 1 }
        position += 1
        var members: [(key: String, value: TokenizerJSONValue)] = []
        // Keys compared as exact UTF-8 bytes, as lookups are (a String set would merge "é" and "e\u{301}").
        var keys = Set<[UInt8]>()
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { throw failure("expected a string key") }
            let keyStart = position
            let key = try parseString()
            // Foundation's parsers keep the last of a repeated key without a word: refuse it.
            guard keys.insert(Array(key.utf8)).inserted else {
                position = keyStart
                throw failure("duplicate key '\(key)'")
            }
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: ":") else { throw failure("expected ':'") }
            position += 1
            skipWhitespace()
            members.append((key, try parseValue()))
            skipWhitespace()
            guard position < bytes.count else { throw failure("unterminated object") }
            if bytes[position] == UInt8(ascii: ",") {
                position += 1
            } else if bytes[position] == UInt8(ascii: "}") {
                position += 1
                return .object(members)
            } else {
                throw failure("expected ',' or '}'")
            }
        }
    }

    private mutating func parseArray() throws(Failure) -> TokenizerJSONValue {
        try enter()
        defer { depth -= 1 }
        position += 1
        var elements: [TokenizerJSONValue] = []
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "]") {
            position += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue())
            skipWhitespace()
            guard position < bytes.count else { throw failure("unterminated array") }
            if bytes[position] == UInt8(ascii: ",") {
                position += 1
            } else if bytes[position] == UInt8(ascii: "]") {
                position += 1
                return .array(elements)
            } else {
                throw failure("expected ',' or ']'")
            }
        }
    }

    private mutating func parseNumber() throws(Failure) -> TokenizerJSONValue {
        let start = position
        while position < bytes.count, Self.isNumberByte(bytes[position]) { position += 1 }
        let text = String(decoding: bytes[start..<position], as: UTF8.self)
        guard let value = Double(text) else {
            position = start
            throw failure("invalid number '\(text)'")
        }
        return .number(value)
    }

    private static func isNumberByte(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "-") || b == UInt8(ascii: "+")
            || b == UInt8(ascii: ".") || b == UInt8(ascii: "e") || b == UInt8(ascii: "E")
    }

    private mutating func parseHex4() throws(Failure) -> UInt32 {
        guard position + 4 <= bytes.count else { throw failure("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[position]
            let digit: UInt32
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(b - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(b - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(b - UInt8(ascii: "A") + 10)
            default: throw failure("invalid hex digit in \\u escape")
            }
            value = value << 4 | digit
            position += 1
        }
        return value
    }

    /// A string literal; raw bytes must be valid UTF-8, escapes must form valid scalars.
    private mutating func parseString() throws(Failure) -> String {
        position += 1  // opening quote
        var out: [UInt8] = []
        var runStart = position
        while true {
            guard position < bytes.count else { throw failure("unterminated string") }
            let b = bytes[position]
            if b == UInt8(ascii: "\"") {
                out.append(contentsOf: bytes[runStart..<position])
                position += 1
                break
            }
            if b < 0x20 { throw failure("unescaped control character in string") }
            if b != UInt8(ascii: "\\") {
                position += 1
                continue
            }
            out.append(contentsOf: bytes[runStart..<position])
            position += 1
            guard position < bytes.count else { throw failure("unterminated escape") }
            let escape = bytes[position]
            position += 1
            switch escape {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var code = try parseHex4()
                if (0xD800...0xDBFF).contains(code) {
                    // A high surrogate must be followed by an escaped low surrogate.
                    guard position + 6 <= bytes.count, bytes[position] == UInt8(ascii: "\\"),
                        bytes[position + 1] == UInt8(ascii: "u")
                    else { throw failure("unpaired surrogate in \\u escape") }
                    position += 2
                    let low = try parseHex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw failure("unpaired surrogate in \\u escape") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(code) {
                    throw failure("unpaired surrogate in \\u escape")
                }
                guard let scalar = Unicode.Scalar(code) else { throw failure("invalid \\u escape") }
                out.append(contentsOf: String(scalar).utf8)
            default:
                throw failure("invalid escape '\\\(Unicode.Scalar(escape))'")
            }
            runStart = position
        }
        guard let string = String(validating: out, as: UTF8.self) else { throw failure("string is not valid UTF-8") }
        return string
    }
}

/// Appends JSON text to a byte buffer; strings are written as raw UTF-8 with only the escapes
/// JSON requires, so the output reads the same scalars back.
struct TokenizerJSONWriter {
    var bytes: [UInt8] = []

    mutating func raw(_ text: String) { bytes.append(contentsOf: text.utf8) }

    mutating func string(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        for b in text.utf8 {
            switch b {
            case UInt8(ascii: "\""): raw("\\\"")
            case UInt8(ascii: "\\"): raw("\\\\")
            case 0x0A: raw("\\n")
            case 0x0D: raw("\\r")
            case 0x09: raw("\\t")
            case 0..<0x20:
                let hex = String(b, radix: 16)
                raw("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
            default: bytes.append(b)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// A value; objects keep their member order.
    mutating func value(_ value: TokenizerJSONValue) {
        switch value {
        case .null: raw("null")
        case .bool(let b): raw(b ? "true" : "false")
        case .number(let n):
            if n == n.rounded(), abs(n) < 1e15 { raw(String(Int64(n))) } else { raw("\(n)") }
        case .string(let s): string(s)
        case .array(let elements):
            raw("[")
            for (i, element) in elements.enumerated() {
                if i > 0 { raw(",") }
                self.value(element)
            }
            raw("]")
        case .object(let members):
            raw("{")
            for (i, member) in members.enumerated() {
                if i > 0 { raw(",") }
                string(member.key)
                raw(":")
                self.value(member.value)
            }
            raw("}")
        }
    }
}

/// Checks JSON before Foundation reads it: a key repeated in one object (which JSONSerialization
/// and JSONDecoder accept, keeping the last) is refused, and a syntax error is named with its byte
/// offset (Foundation says only "The given data was not valid JSON").
func checkJSON(_ bytes: [UInt8], path: String, what: String) throws(SheafError) {
    do { _ = try TokenizerJSONParser.parse(bytes) } catch {
        throw .io(path: path, detail: error.message.hasPrefix("duplicate key") ? "\(what): \(error.message)" : "\(what) is not valid JSON: \(error.message)")
    }
}
