/// SplitMix64 (Steele, Lea, Flood 2014): a fast seeded generator for reproducible data.
/// `SystemRandomNumberGenerator` is a system call per number and not reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), 24 random bits.
    public mutating func nextSignedUnitFloat() -> Float {
        Float(next() >> 40) * (2.0 / Float(1 << 24)) - 1
    }

    /// Uniform in [-1, 1), 53 random bits.
    public mutating func nextSignedUnitDouble() -> Double {
        Double(next() >> 11) * (2.0 / Double(UInt64(1) << 53)) - 1
    }
}
