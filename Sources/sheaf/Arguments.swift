/// A usage error: printed with a pointer to `--help`, exit code 2.
struct UsageError: Error, CustomStringConvertible {
    let description: String
}

/// Parsed command-line arguments: positionals, `--name value` options and `--flag` switches.
/// Unknown options are errors, so a typo never passes silently.
struct Arguments {
    var positionals: [String] = []
    private var values: [String: String] = [:]
    private var switches: Set<String> = []

    init(_ args: some Sequence<String>, options: Set<String>, flags: Set<String>) throws(UsageError) {
        var it = args.makeIterator()
        while let arg = it.next() {
            guard arg.hasPrefix("--"), arg.count > 2 else {
                positionals.append(arg)
                continue
            }
            var name = String(arg.dropFirst(2)), inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if flags.contains(name) {
                guard inline == nil else { throw UsageError(description: "--\(name) takes no value") }
                switches.insert(name)
            } else if options.contains(name) {
                guard let value = inline ?? it.next() else { throw UsageError(description: "--\(name) needs a value") }
                values[name] = value
            } else {
                throw UsageError(description: "unknown option --\(name)")
            }
        }
    }

    func value(_ name: String) -> String? { values[name] }
    func flag(_ name: String) -> Bool { switches.contains(name) }

    func int(_ name: String) throws(UsageError) -> Int? {
        guard let v = values[name] else { return nil }
        guard let n = Int(v) else { throw UsageError(description: "--\(name) expects an integer, got '\(v)'") }
        return n
    }
}
