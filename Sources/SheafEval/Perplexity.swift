import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// The evaluation protocols of BENCHMARK.md.
public enum EvalProtocol: String, Sendable, CaseIterable {
    /// The first 32 non-overlapping 2048-token windows of the evaluation text.
    case S
    /// All complete non-overlapping 2048-token windows.
    case P

    public var context: Int { 2048 }
    public var windows: Int? { self == .S ? 32 : nil }
}

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
public enum CalibrationWindows {
    /// Protocol S: 128 windows of 512 tokens; Protocol P: 256 of 2048.
    public static func size(for p: EvalProtocol) -> (count: Int, length: Int) { p == .S ? (128, 512) : (256, 2048) }

    public static func windows(_ tokens: [Int32], count: Int, length: Int) throws(SheafError) -> [[Int32]] {
        guard count >= 1, length >= 1 else {
            throw .invalidArgument(op: "calibration", detail: "needs at least one window of at least one token, got \(count) of \(length)")
        }
        guard tokens.count >= length else {
            throw .invalidArgument(op: "calibration", detail: "the calibration text has \(tokens.count) tokens, fewer than one window of \(length)")
        }
        let step = (tokens.count - length) / count
        return (0..<count).map { i in Array(tokens[(i * step)..<(i * step + length)]) }
    }

    /// The calibration text C: the files joined with "\n\n" in sorted file-name order.
    public static func joinedText(files: [String]) throws(SheafError) -> String {
        var parts: [String] = []
        for f in files.sorted() {
            guard let text = try? String(contentsOfFile: f, encoding: .utf8) else {
                throw .io(path: f, detail: "cannot read as UTF-8 text")
            }
            parts.append(text)
        }
        return parts.joined(separator: "\n\n")
    }
}
