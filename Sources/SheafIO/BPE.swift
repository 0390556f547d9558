/// GPT-2's reversible map from bytes to printable Unicode scalars: byte-level vocabularies
/// spell every byte as one of these (a space is "Ġ", a newline "Ċ").
enum ByteAlphabet {
    /// `scalar[b]` is the scalar that stands for byte b.
    static let scalars: [Unicode.Scalar] = {
        var printable = Set<Int>()
        for range in [0x21...0x7E, 0xA1...0xAC, 0xAE...0xFF] { printable.formUnion(range) }
        var next = 256
        return (0..<256).map { (byte: Int) -> Unicode.Scalar in
            if printable.contains(byte) { return Unicode.Scalar(UInt8(byte)) }
            defer { next += 1 }
            return Unicode.Scalar(UInt32(next)) ?? " "  // 256...323: always valid scalars
        }
    }()

    /// The byte a scalar stands for, or nil for scalars outside the alphabet.
    static func byte(for scalar: Unicode.Scalar) -> UInt8? { byteOfScalar[scalar.value] }

    private static let byteOfScalar: [UInt32: UInt8] = Dictionary(
        uniqueKeysWithValues: scalars.enumerated().map { ($0.element.value, UInt8($0.offset)) })

    /// The alphabet spelling of raw bytes.
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(scalars[Int(b)]) }
        return String(s)
    }

    /// The bytes a vocabulary entry spells, or nil if a scalar is outside the alphabet.
    static func decode(_ token: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(token.unicodeScalars.count)
        for scalar in token.unicodeScalars {
            guard let b = byte(for: scalar) else { return nil }
            out.append(b)
        }
        return out
    }
}

/// The merge table of a BPE model and the merge loop.
///
/// Merging follows HF `tokenizers` (`Word::merge_all`): repeatedly apply the lowest-ranked
/// adjacent pair, leftmost first on equal ranks, using a priority queue, so a piece of any
/// length (a whole SentencePiece segment) costs O(n log n).
struct BPEMerges: Sendable {
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    private let table: [UInt64: UInt64]

    init(table: [UInt64: UInt64]) { self.table = table }

    static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    static func value(rank: Int, merged: Int32) -> UInt64 {
        UInt64(rank) << 32 | UInt64(UInt32(bitPattern: merged))
    }

    var count: Int { table.count }

    /// Merges `symbols` (token ids) in place.
    func apply(_ symbols: inout [Int32]) {
        let n = symbols.count
        if n < 2 { return }
        if n == 2 {
            if let v = table[Self.key(symbols[0], symbols[1])] { symbols = [Int32(truncatingIfNeeded: v)] }
            return
        }
        // Doubly linked list over positions; a merged-away position gets id -1.
        var ids = symbols
        var prev = [Int32](unsafeUninitializedCapacity: n) { buf, count in
            for i in 0..<n { buf[i] = Int32(i - 1) }
            count = n
        }
        var next = [Int32](unsafeUninitializedCapacity: n) { buf, count in
            for i in 0..<n { buf[i] = i + 1 < n ? Int32(i + 1) : -1 }
            count = n
        }
        // Min-heap of (rank << 32 | left position): lowest rank, then leftmost.
        var heap = MinHeap()
        heap.reserve(n)
        for i in 0..<(n - 1) {
            if let v = table[Self.key(ids[i], ids[i + 1])] { heap.push((v >> 32) << 32 | UInt64(i)) }
        }
        while let top = heap.pop() {
            let pos = Int(top & 0xFFFF_FFFF)
            let rank = top >> 32
            guard ids[pos] >= 0 else { continue }
            let right = Int(next[pos])
            guard right >= 0 else { continue }
            // Stale entries (either side changed since the push) are skipped.
            guard let v = table[Self.key(ids[pos], ids[right])], v >> 32 == rank else { continue }
            ids[pos] = Int32(truncatingIfNeeded: v)
            ids[right] = -1
            let after = next[right]
            next[pos] = after
            if after >= 0 { prev[Int(after)] = Int32(pos) }
            let before = prev[pos]
            if before >= 0, let w = table[Self.key(ids[Int(before)], ids[pos])] {
                heap.push((w >> 32) << 32 | UInt64(before))
            }
            if after >= 0, let w = table[Self.key(ids[pos], ids[Int(after)])] {
                heap.push((w >> 32) << 32 | UInt64(pos))
            }
        }
        var out: [Int32] = []
        var i: Int32 = 0
        while i >= 0 {
            out.append(ids[Int(i)])
            i = next[Int(i)]
        }
        symbols = out
    }
}

/// A binary min-heap of UInt64 keys.
struct MinHeap {
    private var items: [UInt64] = []

    mutating func reserve(_ n: Int) { items.reserveCapacity(n) }

    mutating func push(_ key: UInt64) {
        items.append(key)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if items[parent] <= key { break }
            items[child] = items[parent]
            child = parent
        }
        items[child] = key
    }

    mutating func pop() -> UInt64? {
        guard let last = items.popLast() else { return nil }
        guard !items.isEmpty else { return last }
        let top = items[0]
        let n = items.count
        var parent = 0
        while true {
            var child = 2 * parent + 1
            if child >= n { break }
            if child + 1 < n, items[child + 1] < items[child] { child += 1 }
            if last <= items[child] { break }
            items[parent] = items[child]
            parent = child
        }
        items[parent] = last
        return top
    }
}
