// IEEE binary16 weights to float32 for CPUBackend.convertToFloat32: one hardware conversion a
// value (F16C's vcvtph2ps on x86-64, fcvt on arm64), about memory speed.

/// dst[i] = the float value of the binary16 bits src[i], i < count.
///
/// `@inline(never)`: a release build inlines public functions across modules, and inlined into
/// a caller compiled without F16C the conversion becomes a call to compiler-rt's soft
/// `__extendhfsf2` per value (measured: decode of an F16 checkpoint 2x slower than the scalar
/// bit loop, 3x slower than here). Kept here, it is compiled with this target's flags.
@inline(never)
public func convertHalfToFloat(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { dst[i] = Float(Float16(bitPattern: src[i])) }
}
