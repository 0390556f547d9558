import Foundation

/// Monotonic wall-clock seconds, for benchmarks and progress.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Peak resident set size of this process in bytes (VmHWM from /proc/self/status), or nil.
public func peakResidentBytes() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first
        return kb.map { $0 * 1024 }
    }
    return nil
}

/// Wall seconds per named step, summed over calls, in first-seen order: `sheaf eval --profile`.
/// Used from one thread (the forward pass); the caller synchronises the device before reading
/// the clock, so each step's time includes its queued device work.
public final class StepTimes: @unchecked Sendable {
    public private(set) var names: [String] = []
    public private(set) var seconds: [String: Double] = [:]
    public private(set) var calls: [String: Int] = [:]

    public init() {}

    public func add(_ name: String, _ elapsed: Double) {
        if seconds[name] == nil { names.append(name) }
        seconds[name, default: 0] += elapsed
        calls[name, default: 0] += 1
    }

    public var total: Double { seconds.values.reduce(0, +) }
}
