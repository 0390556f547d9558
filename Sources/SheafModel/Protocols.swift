import Foundation
import SheafCore

/// The protocols of BENCHMARK.md: how many windows of which text calibrate and evaluate.
/// The sizes live here, beside the calibration that consumes them; SheafEval scores them.
public enum EvalProtocol: String, Sendable, CaseIterable {
    /// The first 32 non-overlapping 2048-token windows of the evaluation text.
    case S
    /// All complete non-overlapping 2048-token windows.
    case P

    public var context: Int { 2048 }
    public var windows: Int? { self == .S ? 32 : nil }
}

/// Calibration windows under a protocol: N windows of L tokens of the calibration text,
/// window i starting at token i·((T − L)/N).
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
