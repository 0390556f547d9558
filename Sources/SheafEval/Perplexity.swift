import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// The evaluation protocols of BENCHMARK.md.
public struct PerplexityResult: Sendable, Codable {
    public var perplexity: Double
    public var meanNLL: Double
    public var predictions: Int
    public var windows: Int
    public var context: Int
    public var tokensPerSecond: Double
    public var seconds: Double
    public var peakResidentBytes: Int?
}

public enum Perplexity {
    /// Splits `tokens` into non-overlapping windows of `context` tokens (the first `windows`, or
    /// all complete ones when nil).
    public static func windows(_ tokens: [Int32], context: Int, count: Int?) throws(SheafError) -> [[Int32]] {
        guard context >= 2 else { throw .invalidArgument(op: "eval", detail: "--ctx must be at least 2, got \(context)") }
        let available = tokens.count / context
        guard available >= 1 else {
            throw .invalidArgument(op: "eval", detail: "the text has \(tokens.count) tokens, fewer than one window of \(context)")
        }
        let n = count ?? available
        guard n >= 1 else { throw .invalidArgument(op: "eval", detail: "zero windows requested") }
        guard n <= available else {
            throw .invalidArgument(op: "eval", detail: "\(n) windows of \(context) tokens requested, the text has \(available)")
        }
        return (0..<n).map { Array(tokens[($0 * context)..<(($0 + 1) * context)]) }
    }

    /// exp(mean NLL) over every prediction of every window, each window scored independently.
    public static func evaluate(
        _ model: LlamaModel, windows: [[Int32]], progress: (Int, Int, Double) -> Void = { _, _, _ in }
    ) throws(SheafError) -> PerplexityResult {
        guard !windows.isEmpty, windows.allSatisfy({ $0.count >= 2 }) else {
            throw .invalidArgument(op: "eval", detail: "needs at least one window of at least 2 tokens")
        }
        let t0 = monotonicSeconds()
        var total = 0.0, predictions = 0
        for (i, w) in windows.enumerated() {
            let nll = try model.nextTokenNLL(w)
            if let bad = nll.firstIndex(where: { !$0.isFinite }) {
                // A perplexity of NaN is no result: say where the activations broke.
                let step = try model.firstNonFiniteStep(w) ?? "the cross-entropy"
                throw .nonFinite(op: "eval", what: "the NLL of window \(i + 1), prediction \(bad) (\(nll[bad])): the activations first become non-finite in \(step)")
            }
            for v in nll { total += Double(v) }
            predictions += nll.count
            progress(i + 1, windows.count, monotonicSeconds() - t0)
        }
        let seconds = monotonicSeconds() - t0
        let mean = total / Double(predictions)
        return PerplexityResult(
            perplexity: exp(mean), meanNLL: mean, predictions: predictions, windows: windows.count,
            context: windows.first?.count ?? 0, tokensPerSecond: Double(windows.count * (windows.first?.count ?? 0)) / seconds,
            seconds: seconds, peakResidentBytes: peakResidentBytes())
    }
}

/// Calibration windows of BENCHMARK.md: N windows of L tokens of the calibration text,
/// window i starting at token i·((T − L) / N).
