/// Pre-tokenizers: split text into pieces that BPE then encodes one at a time.
///
/// The regexes of GPT-2 and Llama-3 are implemented as hand-written scanners over Unicode
/// scalars. They reproduce what the Oniguruma regexes of HuggingFace `tokenizers` match,
/// backtracking included (`\s+(?!\S)` leaves the last space of a run for the next word):
/// NSRegularExpression is slower and differs on `\p{..}` classes.
public enum PreTokenizerKind: String, Sendable, CaseIterable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (GPT-2, HF ByteLevel).
    case gpt2
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3
    /// Every `\p{N}` scalar on its own, then the GPT-2 regex on the text between
    /// (llama.cpp's `smollm` pre type; HF `Digits(individual_digits) + ByteLevel`).
    case smollm
    /// No splitting: a segment is one piece (SentencePiece-style tokenizers).
    case none
    /// A new piece before every "▁" (HF Metaspace with `split: true`); SentencePiece only.
    case metaspace
}

/// Character classes the regexes distinguish: `\p{L}`, `\p{N}`, `\s`, everything else.
enum ScalarClass: UInt8 {
    case letter, number, whitespace, other

    static func of(_ value: UInt32) -> ScalarClass {
        if value < 128 { return asciiClasses[Int(value)] }
        guard let scalar = Unicode.Scalar(value) else { return .other }
        let properties = scalar.properties
        // Oniguruma's Unicode \s is exactly the White_Space property (Zs, Zl, Zp, 9-D, 85).
        if properties.isWhitespace { return .whitespace }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    private static let asciiClasses: [ScalarClass] = (0..<128).map { (code: Int) -> ScalarClass in
        switch code {
        case 0x09...0x0D, 0x20: .whitespace
        case 0x30...0x39: .number
        case 0x41...0x5A, 0x61...0x7A: .letter
        default: .other
        }
    }
}

/// Text decoded to scalars with their classes and UTF-8 offsets, for the scanners.
struct ScalarText {
    var scalars: [UInt32] = []
    /// Empty unless the text was classified (only the regex scanners need classes).
    var classes: [ScalarClass] = []
    /// Byte offset of each scalar in the UTF-8 input, then the input's length.
    var offsets: [Int] = []

    var count: Int { scalars.count }

    /// Decodes valid UTF-8 (bytes taken from a Swift String, so no validation is needed).
    init(utf8 bytes: [UInt8], classify: Bool) {
        scalars.reserveCapacity(bytes.count)
        offsets.reserveCapacity(bytes.count + 1)
        var i = 0
        let n = bytes.count
        while i < n {
            let lead = UInt32(bytes[i])
            offsets.append(i)
            var value: UInt32
            if lead < 0x80 {
                value = lead
                i += 1
            } else if lead < 0xE0, i + 1 < n {
                value = (lead & 0x1F) << 6 | UInt32(bytes[i + 1] & 0x3F)
                i += 2
            } else if lead < 0xF0, i + 2 < n {
                value = (lead & 0x0F) << 12 | UInt32(bytes[i + 1] & 0x3F) << 6 | UInt32(bytes[i + 2] & 0x3F)
                i += 3
            } else if i + 3 < n {
                value = (lead & 0x07) << 18 | UInt32(bytes[i + 1] & 0x3F) << 12 | UInt32(bytes[i + 2] & 0x3F) << 6
                    | UInt32(bytes[i + 3] & 0x3F)
                i += 4
            } else {
                value = 0xFFFD  // truncated sequence: cannot come from a String
                i = n
            }
            scalars.append(value)
        }
        offsets.append(n)
        if classify { classes = scalars.map(ScalarClass.of) }
    }
}

enum PreTokenizer {
    private static let apostrophe = UInt32(UInt8(ascii: "'"))
    private static let space: UInt32 = 0x20

    /// Appends the end index of every piece of `range` (pieces are contiguous and cover it).
    static func split(_ text: ScalarText, _ range: Range<Int>, kind: PreTokenizerKind, into ends: inout [Int]) {
        switch kind {
        case .gpt2: splitGPT2(text, range, into: &ends)
        case .llama3: splitLlama3(text, range, into: &ends)
        case .none: if !range.isEmpty { ends.append(range.upperBound) }
        case .metaspace:
            for i in range where i > range.lowerBound && text.scalars[i] == 0x2581 { ends.append(i) }
            if !range.isEmpty { ends.append(range.upperBound) }
        case .smollm:
            // Each number scalar is its own piece; the runs between go through the GPT-2 regex,
            // which sees each run's end as the end of the text (HF applies them in sequence).
            var runStart = range.lowerBound
            for i in range where text.classes[i] == .number {
                splitGPT2(text, runStart..<i, into: &ends)
                ends.append(i + 1)
                runStart = i + 1
            }
            splitGPT2(text, runStart..<range.upperBound, into: &ends)
        }
    }

    /// Length of a contraction ('s 't 're 've 'm 'll 'd) starting at `i`, or 0.
    private static func contractionLength(_ s: [UInt32], _ i: Int, _ end: Int, ignoringCase: Bool) -> Int {
        guard s[i] == apostrophe, i + 1 < end else { return 0 }
        func lower(_ v: UInt32) -> UInt32 {
            ignoringCase && v >= 0x41 && v <= 0x5A ? v + 0x20 : v
        }
        let first = lower(s[i + 1])
        switch first {
        case UInt32(UInt8(ascii: "s")), UInt32(UInt8(ascii: "t")), UInt32(UInt8(ascii: "m")), UInt32(UInt8(ascii: "d")):
            return 2
        case UInt32(UInt8(ascii: "r")), UInt32(UInt8(ascii: "v")), UInt32(UInt8(ascii: "l")):
            guard i + 2 < end else { return 0 }
            let second = lower(s[i + 2])
            let wanted: UInt8 = first == UInt32(UInt8(ascii: "l")) ? UInt8(ascii: "l") : UInt8(ascii: "e")
            return second == UInt32(wanted) ? 3 : 0
        default:
            return 0
        }
    }

    /// End of the run of scalars of class `cls` starting at `i`.
    @inline(__always)
    private static func runEnd(_ c: [ScalarClass], from i: Int, _ end: Int, _ cls: ScalarClass) -> Int {
        var e = i
        while e < end, c[e] == cls { e += 1 }
        return e
    }

    /// The whitespace alternatives shared by both regexes, at a whitespace scalar `i`:
    /// `\s+(?!\S)` backs off one scalar when the run is followed by a non-space; `\s+` takes
    /// a single whitespace scalar followed by a non-space.
    @inline(__always)
    private static func whitespaceEnd(_ c: [ScalarClass], from i: Int, _ end: Int) -> Int {
        let e = runEnd(c, from: i, end, .whitespace)
        return e < end && e - i >= 2 ? e - 1 : e
    }

    static func splitGPT2(_ text: ScalarText, _ range: Range<Int>, into ends: inout [Int]) {
        let s = text.scalars
        let c = text.classes
        let end = range.upperBound
        var i = range.lowerBound
        while i < end {
            let contraction = contractionLength(s, i, end, ignoringCase: false)
            if contraction > 0 {
                i += contraction
                ends.append(i)
                continue
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class.
            let runStart = s[i] == space && i + 1 < end && c[i + 1] != .whitespace ? i + 1 : i
            let cls = c[runStart]
            i = cls == .whitespace ? whitespaceEnd(c, from: i, end) : runEnd(c, from: runStart, end, cls)
            ends.append(i)
        }
    }

    static func splitLlama3(_ text: ScalarText, _ range: Range<Int>, into ends: inout [Int]) {
        let s = text.scalars
        let c = text.classes
        let end = range.upperBound
        var i = range.lowerBound
        @inline(__always) func isNewline(_ v: UInt32) -> Bool { v == 0x0A || v == 0x0D }
        while i < end {
            let contraction = contractionLength(s, i, end, ignoringCase: true)
            if contraction > 0 {
                i += contraction
                ends.append(i)
                continue
            }
            let cls = c[i]
            if cls == .letter {
                // `[^\r\n\p{L}\p{N}]?\p{L}+` without the optional prefix.
                i = runEnd(c, from: i, end, .letter)
            } else if cls != .number, !isNewline(s[i]), i + 1 < end, c[i + 1] == .letter {
                // ... with one prefix scalar that is neither a newline, a letter nor a number.
                i = runEnd(c, from: i + 1, end, .letter)
            } else if cls == .number {
                // `\p{N}{1,3}`
                i = min(runEnd(c, from: i, end, .number), i + 3)
            } else if cls == .other || (s[i] == space && i + 1 < end && c[i + 1] == .other) {
                // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
                i = runEnd(c, from: cls == .other ? i : i + 1, end, .other)
                while i < end, isNewline(s[i]) { i += 1 }
            } else {
                // Whitespace. `\s*[\r\n]+` ends after the run's last newline, if it has one.
                let runEnd = runEnd(c, from: i, end, .whitespace)
                var lastNewline = -1
                for k in i..<runEnd where isNewline(s[k]) { lastNewline = k }
                i = lastNewline >= 0 ? lastNewline + 1 : whitespaceEnd(c, from: i, end)
            }
            ends.append(i)
        }
    }
}
