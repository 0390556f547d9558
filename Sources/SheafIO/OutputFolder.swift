import Foundation
import SheafCore

/// The folder a command writes (`--out`), guarded so that nothing is lost:
/// - it is never an input of the command, inside one, or around one;
/// - an existing folder is replaced (`--force`) only when Sheaf wrote it (it holds sheaf.json,
///   or a model.safetensors whose header says Sheaf wrote it), never `/`, the home folder, the
///   current folder or a plain file;
/// - one writer at a time: `DIR.lock` holds the writer's process id, and a second run that finds
///   a live one refuses;
/// - the work goes into `DIR.partial-PID` and is renamed into place when complete; partial
///   folders and locks left by processes that died are removed, with a notice.
public struct OutputFolder {
    /// The metadata key that marks a model.safetensors as Sheaf's (value: the format version).
    public static let writtenByKey = "written_by"
    public static let writtenByValue = "sheaf"

    /// The resolved target and the temporary folder the work goes into.
    public let path: String
    public let partial: String
    let lock: String

    /// Checks `out` against the command's `inputs`, removes what dead runs left, takes the lock.
    public static func prepare(
        _ out: String, inputs: [String], replace: Bool, notice: (String) -> Void = { _ in }
    ) throws(SheafError) -> OutputFolder {
        let fm = FileManager.default
        let target = try check(out, inputs: inputs, replace: replace)
        let parent = (target as NSString).deletingLastPathComponent, base = (target as NSString).lastPathComponent
        do { try fm.createDirectory(atPath: parent, withIntermediateDirectories: true) } catch {
            throw .io(path: parent, detail: "cannot create: \(error.localizedDescription)")
        }
        let lock = target + ".lock"
        try takeLock(lock, for: target, notice: notice)
        // Partial folders of runs that died (their process is gone).
        for name in (try? fm.contentsOfDirectory(atPath: parent)) ?? [] where name.hasPrefix(base + ".partial-") {
            guard let pid = Int32(name.dropFirst(base.count + ".partial-".count)), !isAlive(pid) || pid == getpid() else { continue }
            if (try? fm.removeItem(atPath: parent + "/" + name)) != nil {
                notice("removed \(parent)/\(name), left by a run (pid \(pid)) that did not finish")
            }
        }
        let partial = target + ".partial-\(getpid())"
        do { try fm.createDirectory(atPath: partial, withIntermediateDirectories: true) } catch {
            try? fm.removeItem(atPath: lock)
            throw .io(path: partial, detail: "cannot create: \(error.localizedDescription)")
        }
        return OutputFolder(path: target, partial: partial, lock: lock)
    }

    /// The resolved target, after the checks of `prepare` that need no lock: a command runs it
    /// before its long work, so a refusal comes first.
    @discardableResult
    public static func check(_ out: String, inputs: [String], replace: Bool) throws(SheafError) -> String {
        let fm = FileManager.default
        let target = resolved(out)
        for input in inputs.map(resolved) {
            if target == input { throw .io(path: out, detail: "--out is the input \(input) itself: choose another folder") }
            if isInside(target, input) { throw .io(path: out, detail: "--out lies inside the input \(input): choose a folder outside it") }
            if isInside(input, target) { throw .io(path: out, detail: "--out contains the input \(input): replacing it would delete the input") }
        }
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: target, isDirectory: &isDirectory) {
            guard replace else { throw .io(path: target, detail: "output folder exists (pass --force to replace it)") }
            guard isDirectory.boolValue else { throw .io(path: target, detail: "exists and is a file, not a folder Sheaf wrote: not replacing it") }
            let protected = ["/", resolved(NSHomeDirectory()), resolved(fm.currentDirectoryPath)]
            if protected.contains(target) { throw .io(path: target, detail: "--force never replaces /, the home folder or the current folder") }
            guard sheafWrote(target) else {
                throw .io(path: target, detail: "--force replaces only a folder Sheaf wrote (with sheaf.json, or a model.safetensors Sheaf wrote); this one is not: not replacing it")
            }
        }
        return target
    }

    /// Moves the finished partial folder into place (replacing the old one) and drops the lock.
    public func finish() throws(SheafError) {
        let fm = FileManager.default
        defer { try? fm.removeItem(atPath: lock) }
        do {
            if fm.fileExists(atPath: path) { try fm.removeItem(atPath: path) }
            try fm.moveItem(atPath: partial, toPath: path)
        } catch {
            throw .io(path: path, detail: "cannot move the finished folder into place: \(error.localizedDescription)")
        }
    }

    /// Removes the partial folder and the lock after a failure.
    public func abandon() {
        try? FileManager.default.removeItem(atPath: partial)
        try? FileManager.default.removeItem(atPath: lock)
    }

    // MARK: helpers

    /// The absolute path with symbolic links resolved as far as the path exists.
    static func resolved(_ path: String) -> String {
        var url = URL(fileURLWithPath: path).standardizedFileURL
        var tail: [String] = []
        while !FileManager.default.fileExists(atPath: url.path), url.path != "/" {
            tail.insert(url.lastPathComponent, at: 0)
            url = url.deletingLastPathComponent()
        }
        var base = url.resolvingSymlinksInPath().path
        for t in tail { base = (base as NSString).appendingPathComponent(t) }
        return base
    }

    static func isInside(_ path: String, _ folder: String) -> Bool {
        folder == "/" ? path != "/" : path.hasPrefix(folder + "/")
    }

    static func isAlive(_ pid: Int32) -> Bool { pid > 0 && (kill(pid, 0) == 0 || errno == EPERM) }

    /// Whether Sheaf wrote the folder: a compressed checkpoint, or a model whose safetensors
    /// header carries Sheaf's mark.
    static func sheafWrote(_ folder: String) -> Bool {
        let fm = FileManager.default
        if fm.fileExists(atPath: folder + "/" + CompressedManifest.fileName) { return true }
        let shards = ((try? fm.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasSuffix(".safetensors") }
        guard !shards.isEmpty else { return false }
        return shards.allSatisfy { (try? SafetensorsFile(path: folder + "/" + $0))?.metadata[writtenByKey] == writtenByValue }
    }

    static func takeLock(_ lock: String, for target: String, notice: (String) -> Void) throws(SheafError) {
        for _ in 0..<2 {
            let fd = open(lock, O_CREAT | O_EXCL | O_WRONLY, 0o644)
            if fd >= 0 {
                let text = "\(getpid())\n"
                _ = text.withCString { write(fd, $0, strlen($0)) }
                close(fd)
                return
            }
            guard errno == EEXIST else { throw .io(path: lock, detail: "cannot create the lock: \(String(cString: strerror(errno)))") }
            let holder = (try? String(contentsOfFile: lock, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let holder, isAlive(holder), holder != getpid() {
                throw .io(path: target, detail: "another sheaf (pid \(holder)) is writing this folder (lock \(lock))")
            }
            try? FileManager.default.removeItem(atPath: lock)
            notice("removed the stale lock \(lock)" + (holder.map { " of pid \($0), which is gone" } ?? ""))
        }
        throw .io(path: lock, detail: "cannot take the lock")
    }
}

/// Bytes of every regular file in `folder` (not following links into other folders): a
/// checkpoint's size on disk as a user copying it sees it. 0 for a folder that cannot be read.
public func folderBytes(_ folder: String) -> Int {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
    return names.reduce(0) { total, name in
        let attributes = try? FileManager.default.attributesOfItem(atPath: folder + "/" + name)
        guard attributes?[.type] as? FileAttributeType == .typeRegular else { return total }
        return total + ((attributes?[.size] as? Int) ?? 0)
    }
}
