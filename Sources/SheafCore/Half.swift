/// Conversions of 16-bit floats to Float32 (exact: every f16 and bf16 value is a float32).
public enum HalfFloat {
    /// IEEE 754 binary16 bits to Float32, subnormals, infinities and NaN included.
    @inlinable
    public static func f16ToFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = Int((h >> 10) & 0x1F)
        let mantissa = UInt32(h & 0x3FF)
        switch exponent {
        case 0:
            // Subnormal or zero: mantissa · 2⁻²⁴.
            let magnitude = Float(mantissa) * (1.0 / 16_777_216.0)
            return sign != 0 ? -magnitude : magnitude
        case 31:
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        default:
            return Float(bitPattern: sign | UInt32(exponent + 112) << 23 | (mantissa << 13))
        }
    }

    /// bfloat16 bits are the top half of a Float32.
    @inlinable
    public static func bf16ToFloat(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

    /// Float32 to binary16 bits, round to nearest even (Swift's Float16 conversion).
    @inlinable
    public static func floatToF16(_ f: Float) -> UInt16 {
        #if arch(x86_64) || arch(arm64)
            return Float16(f).bitPattern
        #else
            return 0
        #endif
    }

    /// Float32 to bfloat16 bits, round to nearest even; NaN stays NaN.
    @inlinable
    public static func floatToBF16(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        if f.isNaN { return UInt16(bits >> 16) | 0x0040 }
        let rounding = 0x7FFF + ((bits >> 16) & 1)
        return UInt16((bits &+ rounding) >> 16)
    }
}
