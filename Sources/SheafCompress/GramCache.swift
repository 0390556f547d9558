import Foundation
import SheafBackend
import SheafCore
import SheafIO
import SheafModel

/// Calibration Grams on disk, so a second compression of the same model with the same
/// calibration windows (another ratio or method) skips calibration. One folder per key, one
/// safetensors file of Float64 Grams per layer; the folder is written under a temporary name
/// and renamed when every layer is in, so a cut-short run never leaves a cache that looks whole.
public struct GramCache: Sendable {
    /// Folder holding one subfolder per key.
    public let root: String

    public init(root: String) { self.root = root }

    /// SHA-256 over the model's checksum, the backend that computes the Grams and the calibration
    /// windows' token ids: the windows fix the text, the protocol and the tokenizer. The backend
    /// enters because backends (and the cpu backend's vector and portable loops) round
    /// differently in the last bits, and a compression must come out bit for bit the same on
    /// one backend whether its Grams were cached or not.
    public static func key(modelChecksum: String, backend: any Backend, windows: [[Int32]]) -> String {
        var h = SheafCore.SHA256()
        let header = "sheaf-grams-v3|\(modelChecksum)|\(backend.kind.rawValue)|\(backend.deviceName)|"
            + "\(windows.count)|\(windows.first?.count ?? 0)|"
        Array(header.utf8).withUnsafeBytes { h.update($0) }
        for w in windows { w.withUnsafeBytes { h.update($0) } }
        return SheafCore.SHA256.hex(h.finalize())
    }

    func folder(_ key: String) -> String { root + "/" + key }
    static func file(_ layer: Int) -> String { String(format: "layer-%04d.safetensors", layer) }

    /// Whether a complete entry for `key` exists with `layers` layers.
    public func contains(_ key: String, layers: Int) -> Bool {
        (0..<layers).allSatisfy { FileManager.default.fileExists(atPath: folder(key) + "/" + Self.file($0)) }
    }

    /// SHA-256 of the Grams' bytes in input order: stored in each layer file's metadata, checked
    /// on read, so a damaged or poisoned entry is recomputed instead of breaking every later run.
    static func checksum(_ grams: [LayerGrams.Input: Matrix<Double>]) -> String {
        var h = SheafCore.SHA256()
        for input in LayerGrams.Input.allCases { grams[input]?.values.withUnsafeBytes { h.update($0) } }
        return SheafCore.SHA256.hex(h.finalize())
    }

    /// Layer `layer`'s Grams from a complete entry, checked against the stored checksum and for
    /// non-finite values.
    public func read(_ key: String, layer: Int) throws(SheafError) -> [LayerGrams.Input: Matrix<Double>] {
        let path = folder(key) + "/" + Self.file(layer)
        let file = try SafetensorsFile(path: path)
        var out: [LayerGrams.Input: Matrix<Double>] = [:]
        for input in LayerGrams.Input.allCases {
            let info = try file.info(input.rawValue)
            guard info.shape.count == 2, info.shape[0] == info.shape[1], try file.dtype(input.rawValue) == .F64 else {
                throw .io(path: path, detail: "cached Gram '\(input.rawValue)' is \(info.type) \(info.shape), expected a square F64 matrix")
            }
            let bytes = try file.rawBytes(input.rawValue)
            var values = [Double](repeating: 0, count: info.elementCount)
            values.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
            out[input] = try Matrix(rows: info.shape[0], cols: info.shape[1], values: values)
        }
        guard let stored = file.metadata["sha256"], stored == Self.checksum(out) else {
            throw .io(path: path, detail: "cached Grams fail their checksum (damaged or written by another version)")
        }
        if let (input, g) = out.first(where: { $0.value.values.contains { !$0.isFinite } }) {
            throw .io(path: path, detail: "cached Gram '\(input.rawValue)' holds a non-finite value at \(g.values.firstIndex { !$0.isFinite }!)")
        }
        return out
    }

    /// A method's own measurement stored beside the Grams of `key` (e.g. the sensitivity
    /// probes), nil when absent. Written atomically by `writeExtra`.
    public func extra(_ key: String, name: String) -> Data? {
        FileManager.default.contents(atPath: folder(key) + "/" + name)
    }

    /// Stores `data` as `name` beside the complete Grams of `key` (temporary name, then rename).
    public func writeExtra(_ key: String, name: String, _ data: Data) throws(SheafError) {
        let path = folder(key) + "/" + name, partial = path + ".partial-\(getpid())"
        do {
            try data.write(to: URL(fileURLWithPath: partial))
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: partial, toPath: path)
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw .io(path: path, detail: "cannot write beside the cached Grams: \(error.localizedDescription)")
        }
    }

    /// Writes the layers of one key into a temporary folder; `finish` renames it into place.
    public final class Writer {
        let target: String, partial: String

        init(target: String) throws(SheafError) {
            self.target = target
            partial = target + ".partial-\(getpid())"
            try? FileManager.default.removeItem(atPath: partial)
            do { try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true) } catch {
                throw .io(path: partial, detail: "cannot create the Gram cache folder: \(error.localizedDescription)")
            }
        }

        public func write(layer: Int, _ grams: [LayerGrams.Input: Matrix<Double>]) throws(SheafError) {
            var tensors: [TensorToWrite] = []
            for (input, g) in grams {
                let bytes = g.values.withUnsafeBytes { [UInt8]($0) }
                tensors.append(try TensorToWrite(name: input.rawValue, shape: [g.rows, g.cols], dtype: .F64, bytes: bytes))
            }
            try SafetensorsWriter.write(tensors, metadata: ["sha256": GramCache.checksum(grams)], to: partial + "/" + GramCache.file(layer))
        }

        public func finish() throws(SheafError) {
            let fm = FileManager.default
            do {
                if fm.fileExists(atPath: target) { try fm.removeItem(atPath: target) }
                try fm.moveItem(atPath: partial, toPath: target)
            } catch {
                throw .io(path: target, detail: "cannot move the finished Gram cache into place: \(error.localizedDescription)")
            }
        }

        public func abandon() { try? FileManager.default.removeItem(atPath: partial) }
    }

    public func writer(_ key: String) throws(SheafError) -> Writer {
        do { try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw .io(path: root, detail: "cannot create the Gram cache folder: \(error.localizedDescription)")
        }
        return try Writer(target: folder(key))
    }
}
