#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import SheafCore

/// A read-only memory map of a whole file, unmapped when released. Pages are read on first
/// touch, so mapping a model does not read its tensor data; `release` drops the pages of a
/// tensor once its values have been converted, so a loaded model's weights are resident once
/// (in the backend), not twice (there and in the mapping).
final class MappedFile: @unchecked Sendable {
    /// The file's bytes; valid for the lifetime of this object, never written.
    let bytes: UnsafeRawBufferPointer

    /// Bytes of a virtual-memory page.
    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// Whether `release` drops pages (off only to show, in a test, what it changes).
    let releasesPages: Bool

    init(path: String, releasesPages: Bool = true) throws(SheafError) {
        self.releasesPages = releasesPages
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, detail: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .io(path: path, detail: "cannot stat: \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .io(path: path, detail: "not a regular file") }
        let size = Int(status.st_size)
        guard size > 0 else {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw .io(path: path, detail: "cannot memory-map \(size) bytes: \(String(cString: strerror(errno)))")
        }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }

    /// The whole pages inside `range` (byte offsets in the file): those a tensor owns alone.
    /// The partial pages at either end may hold a neighbour's bytes and are left alone.
    func innerPages(_ range: Range<Int>) -> Range<Int>? {
        guard let base = bytes.baseAddress, range.lowerBound >= 0, range.upperBound <= bytes.count else { return nil }
        let page = Self.pageSize, address = Int(bitPattern: base)
        let first = (address + range.lowerBound + page - 1) / page * page - address
        let end = (address + range.upperBound) / page * page - address
        return first < end ? first..<end : nil
    }

    /// Drops this process's pages of the whole pages inside `range`. The mapping is private and
    /// never written, so the pages come back from the file, unchanged, if they are read again;
    /// until then they no longer count in the resident set. A failed madvise only leaves the
    /// pages resident (nothing is lost), so it is not an error.
    func release(_ range: Range<Int>) {
        guard releasesPages, let pages = innerPages(range), let base = bytes.baseAddress else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + pages.lowerBound), pages.count, MADV_DONTNEED)
    }

    #if os(Linux)
        /// How many of the whole pages inside `range` this process has resident now, from
        /// /proc/self/pagemap (bit 63 of each page's entry: present). `mincore` cannot tell: for
        /// a file mapping it reports the page cache, which keeps a released page. Nil where
        /// pagemap cannot be read.
        func residentPages(_ range: Range<Int>) -> (resident: Int, total: Int)? {
            guard let pages = innerPages(range), let base = bytes.baseAddress else { return (0, 0) }
            let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            let page = Self.pageSize, firstPage = (Int(bitPattern: base) + pages.lowerBound) / page
            let count = pages.count / page
            var entries = [UInt64](repeating: 0, count: count)
            let read = entries.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(firstPage * 8)) }
            guard read == count * 8 else { return nil }
            return (entries.filter { $0 & (1 << 63) != 0 }.count, count)
        }
    #endif
}
