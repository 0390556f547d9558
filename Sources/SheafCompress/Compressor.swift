import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// A compressed model before it is written: the method's output with what it took to make it.
public struct CompressionResult: Sendable {
    public var method: String
    public var requestedRatio: Double?
    public var options: JSONValue
    public var output: MethodOutput
    public var gramsFromCache: Bool
    /// The source's checksum when the cache computed it (nil without a cache).
    public var sourceChecksum: String?
    /// Seconds per phase: "calibration", "method" (the method's per-layer steps and its finish).
    public var seconds: [String: Double]
    /// Storage of the checkpoint's matrices (f32, f16, bf16, q8, q4): the method's float tensors
    /// already hold the values it keeps; the untouched matrices of the source are written in it too.
    public var dtype: TensorStorage = .float(.F32)
    /// Storage of the token embedding (and an untied head); `dtype` unless chosen apart.
    public var embeddingStorage: TensorStorage = .float(.F32)

    /// A tensor of the output by name.
    public func tensor(_ name: String) -> Matrix<Float>? { output.tensors.first { $0.name == name }?.value }
}

/// The shared driver: calibrates (or reads the cached Grams) layer by layer when the method
/// asks for statistics, hands each layer to the method as soon as it is complete, and finishes.
/// `dtype` is the storage of the checkpoint's matrices (the method's output is rounded or
/// quantised to it); `embedding` that of the embedding and an untied head (nil: `dtype`).
public enum Compressor {
    public static func compress(
        files: ModelFiles, backend: any Backend, windows: [[Int32]], method: any CompressionMethod, cache: GramCache? = nil,
        dtype: TensorStorage = .float(.F32), embedding: TensorStorage? = nil, progress: @escaping (String) -> Void = { _ in }
    ) throws(SheafError) -> CompressionResult {
        let c = files.config
        guard files.manifest == nil else {
            throw .invalidArgument(op: "compress", detail: "\(files.path) is already a compressed checkpoint: compress its source model instead")
        }
        var context = CompressionContext(
            files: files, loader: WeightLoader(files: files, backend: backend), backend: backend, windows: windows, progress: progress)
        var methodSeconds = 0.0
        let t0 = monotonicSeconds()

        func onLayer(_ i: Int, _ grams: [LinearInput: Matrix<Double>]?) throws(SheafError) {
            let start = monotonicSeconds()
            try method.layerReady(i, grams: grams, context: context)
            methodSeconds += monotonicSeconds() - start
            let elapsed = monotonicSeconds() - t0
            progress("layer \(i + 1)/\(c.layerCount) \(grams == nil ? "" : "calibrated and ")compressed, \(fixed(elapsed)) s, "
                + "ETA \(fixed(elapsed / Double(i + 1) * Double(c.layerCount - i - 1))) s")
        }

        var fromCache = false
        var checksum: String?
        switch method.statistics {
        case .none:
            for i in 0..<c.layerCount { try onLayer(i, nil) }
        case .inputGrams:
            checksum = try cache.map { (_) throws(SheafError) in try files.checksum() }
            context.cache = cache
            context.gramKey = checksum.map { GramCache.key(modelChecksum: $0, backend: backend, windows: windows) }
            fromCache = try calibrate(
                files: files, backend: backend, windows: windows, cache: cache, checksum: checksum, progress: progress, onLayer: onLayer)
        }
        let calibrationSeconds = monotonicSeconds() - t0 - methodSeconds
        let f0 = monotonicSeconds()
        let output = try method.finish(context: context).stored(as: dtype)
        methodSeconds += monotonicSeconds() - f0
        return CompressionResult(
            method: method.name, requestedRatio: method.requestedRatio, options: method.recordedOptions, output: output,
            gramsFromCache: fromCache, sourceChecksum: checksum,
            seconds: ["calibration": calibrationSeconds, "method": methodSeconds], dtype: dtype, embeddingStorage: embedding ?? dtype)
    }

    /// Each layer's input Grams, from the cache when it holds a complete entry, else by running
    /// the calibration windows (and caching them). Returns whether they came from the cache.
    /// Host memory holds one layer's Grams at a time beyond what `onLayer` keeps.
    static func calibrate(
        files: ModelFiles, backend: any Backend, windows: [[Int32]], cache: GramCache?, checksum: String?,
        progress: (String) -> Void, onLayer: (Int, [LinearInput: Matrix<Double>]) throws(SheafError) -> Void
    ) throws(SheafError) -> Bool {
        let c = files.config
        let key = checksum.map { GramCache.key(modelChecksum: $0, backend: backend, windows: windows) }
        if let cache, let key, cache.contains(key, layers: c.layerCount) {
            progress("calibration Grams from the cache (\(cache.root)/\(key.prefix(12))…)")
            // Read every layer before handing any over, one at a time (all 30 layers of SmolLM2 are
            // 800 MB): a damaged entry then costs a recalibration, not a method run twice.
            var damaged: SheafError?
            for i in 0..<c.layerCount {
                do throws(SheafError) { _ = try cache.read(key, layer: i) } catch {
                    damaged = error
                    break
                }
            }
            if let damaged {
                progress("warning: the cached Grams cannot be read (\(damaged.description)); calibrating instead")
            } else {
                for i in 0..<c.layerCount { try onLayer(i, try cache.read(key, layer: i)) }
                return true
            }
        }
        // The cache is an optimisation: if it cannot be written, calibrate without it.
        var writer: GramCache.Writer?
        if let cache, let key {
            do throws(SheafError) { writer = try cache.writer(key) } catch {
                progress("warning: not caching the Grams: \(error.description)")
            }
        }
        do throws(SheafError) {
            _ = try Calibration.collectGrams(files: files, backend: backend, windows: windows, keep: false, onLayer: { (i, grams) throws(SheafError) in
                let host = try grams.download()
                try writer?.write(layer: i, host)
                try onLayer(i, host)
            })
            try writer?.finish()
        } catch {
            writer?.abandon()
            throw error
        }
        return false
    }
}

/// "12.3": seconds and sizes in progress lines.
func fixed(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
