import Foundation
import SheafCore

/// 64-byte aligned, zero-filled host memory backing `cpu` and `reference` buffers.
final class HostStorage: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    let byteCount: Int

    init(byteCount: Int) throws(SheafError) {
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 64, max(byteCount, 64)) == 0, let p else {
            throw .invalidArgument(op: "makeBuffer", detail: "cannot allocate \(byteCount) bytes")
        }
        memset(p, 0, max(byteCount, 64))
        pointer = p
        self.byteCount = byteCount
    }

    deinit { free(pointer) }
}

/// Allocation and transfer for backends whose buffers live in host memory.
protocol HostMemoryBackend: Backend {}

extension HostMemoryBackend {
    public func makeBuffer(_ scalar: ScalarType, count: Int) throws(SheafError) -> DeviceBuffer {
        try makeHostBuffer(scalar, count: count)
    }

    public func uploadBytes(_ bytes: UnsafeRawBufferPointer, as scalar: ScalarType) throws(SheafError) -> DeviceBuffer {
        try uploadHostBytes(bytes, as: scalar)
    }

    public func downloadBytes(_ buffer: DeviceBuffer, into bytes: UnsafeMutableRawBufferPointer) throws(SheafError) {
        try downloadHostBytes(buffer, into: bytes)
    }

    /// Host ops complete before they return.
    public func synchronize() throws(SheafError) {}

    func makeHostBuffer(_ scalar: ScalarType, count: Int) throws(SheafError) -> DeviceBuffer {
        guard count >= 0 else { throw .invalidArgument(op: "makeBuffer", detail: "negative count \(count)") }
        let storage = try HostStorage(byteCount: count * scalar.byteSize)
        return DeviceBuffer(scalar: scalar, count: count, owner: ObjectIdentifier(self), storage: storage)
    }

    func uploadHostBytes(_ bytes: UnsafeRawBufferPointer, as scalar: ScalarType) throws(SheafError) -> DeviceBuffer {
        guard bytes.count % scalar.byteSize == 0 else {
            throw .invalidArgument(op: "upload", detail: "\(bytes.count) bytes is not a whole number of \(scalar)")
        }
        let buffer = try makeHostBuffer(scalar, count: bytes.count / scalar.byteSize)
        if let base = bytes.baseAddress { host(buffer).copyMemory(from: base, byteCount: bytes.count) }
        return buffer
    }

    func downloadHostBytes(_ buffer: DeviceBuffer, into bytes: UnsafeMutableRawBufferPointer) throws(SheafError) {
        guard buffer.owner == ObjectIdentifier(self), bytes.count == buffer.byteCount else {
            throw .invalidArgument(op: "download", detail: "buffer of \(buffer.byteCount) bytes into \(bytes.count)")
        }
        if let base = bytes.baseAddress { base.copyMemory(from: host(buffer), byteCount: bytes.count) }
    }

    func host(_ buffer: DeviceBuffer) -> UnsafeMutableRawPointer {
        // Ownership is checked by every op before this is called.
        (buffer.storage as! HostStorage).pointer
    }

    func floats(_ v: MatrixView) -> UnsafeMutablePointer<Float> {
        host(v.buffer).assumingMemoryBound(to: Float.self) + v.offset
    }

    func doubles(_ v: MatrixView) -> UnsafeMutablePointer<Double> {
        host(v.buffer).assumingMemoryBound(to: Double.self) + v.offset
    }

    func ints(_ b: DeviceBuffer) -> UnsafeMutablePointer<Int32> {
        host(b).assumingMemoryBound(to: Int32.self)
    }
}
