import Foundation
import SheafBackend
import SheafTestSupport
import Testing

/// The `sheaf` binary as a user runs it: exit codes, one-line errors, JSON that parses.
extension BackendSuites {
    @Suite struct CLI {
        func sheaf(_ args: [String], env: [String: String] = [:]) throws -> SheafCLI.Run { try SheafCLI().sheaf(args, env: env) }

        @Test func doctorPassesOnBothBackends() throws {
            let r = try sheaf(["doctor", "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            #expect(json?["passed"] as? Bool == true)
            let report = json?["report"] as? [String: Any]
            let parity = report?["parity"] as? [[String: Any]] ?? []
            let backends = Set(parity.compactMap { $0["backend"] as? String })
            #expect(backends == ["cpu", "opencl"], "backends checked: \(backends)")
            // Every case of the quick suite on each backend, the clustered layer's gather ops and the
            // sensitivity probes' KL among them.
            #expect(parity.count == 2 * 29)
            for op in ["gatherColumns", "sumColumnGroups", "kmeansDistances", "klDivergence", "convertToFloat32", "dequantizeRows", "gemvStored"] {
                #expect(Set(parity.filter { $0["op"] as? String == op }.compactMap { $0["backend"] as? String }) == ["cpu", "opencl"], "\(op)")
            }
            #expect((report?["openCLDevices"] as? [Any])?.isEmpty == false)
            let cpu = report?["cpu"] as? [String: Any]
            #expect((cpu?["model"] as? String)?.isEmpty == false)
            // The extensions listed are the ones the backend's own check sees.
            let extensions = cpu?["extensions"] as? [String] ?? []
            #expect(!CPUFeatures.vectorKernels || extensions.contains { $0.hasPrefix(CPUFeatures.vectorISA) }, "\(extensions)")
        }

        /// A kernel set narrower than the CPU's vector ISA gets a suggestion; a matching one none.
        @Test func doctorSuggestsTheCPUsKernelSet() {
            func cpu(_ extensions: [String], _ arch: String = "x86_64") -> CPUFeatures.Description {
                .init(model: "test", architecture: arch, extensions: extensions)
            }
            let avx512 = ["AVX", "AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512VL", "AVX-512DQ"]
            #expect(Doctor.suggestedCoreType(running: "Prescott", cpu: cpu(avx512)) == "SkylakeX")
            #expect(Doctor.suggestedCoreType(running: "Haswell", cpu: cpu(avx512)) == "SkylakeX")
            #expect(Doctor.suggestedCoreType(running: "Prescott", cpu: cpu(["AVX", "AVX2", "FMA"])) == "Haswell")
            #expect(Doctor.suggestedCoreType(running: "Haswell", cpu: cpu(["AVX", "AVX2", "FMA"])) == nil)
            #expect(Doctor.suggestedCoreType(running: "SkylakeX", cpu: cpu(avx512)) == nil)
            #expect(Doctor.suggestedCoreType(running: "ARMV8", cpu: cpu(["NEON"], "arm64")) == nil)
        }

        /// OPENBLAS_CORETYPE is reported as an override, and OpenBLAS then runs that kernel set.
        @Test func doctorReportsTheOpenBLASCoreTypeOverride() throws {
            let override = try sheaf(["doctor", "--json"], env: ["OPENBLAS_CORETYPE": "Prescott"])
            let json = try JSONSerialization.jsonObject(with: Data(override.stdout.utf8)) as? [String: Any]
            let blas = (json?["report"] as? [String: Any])?["openBLAS"] as? [String: Any]
            #expect(blas?["coreTypeOverride"] as? String == "Prescott")
            #expect(blas?["core"] as? String == "Prescott", "\(blas ?? [:])")
            let plain = try sheaf(["doctor"])
            if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil {
                #expect(plain.stdout.contains("OpenBLAS's own choice"), "\(plain.stdout)")
            }
            #expect(plain.stdout.contains("CPU: "))
        }

        @Test func benchQuickPrintsFiguresAsJSON() throws {
            let r = try sheaf(["bench", "kernels", "--quick", "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            let results = json?["results"] as? [[String: Any]] ?? []
            for (op, backend) in [("gram", "cpu"), ("gram", "opencl"), ("gram", "openblas ssyrk"), ("gemm", "openblas sgemm"),
                                  ("kmeansDistances", "opencl")] {
                let row = results.first { $0["op"] as? String == op && $0["backend"] as? String == backend }
                #expect((row?["gflops"] as? Double ?? 0) > 0, "\(op) on \(backend)")
            }
            #expect(((json?["machine"] as? [String: Any])?["cores"] as? Int ?? 0) > 0)
        }

        @Test func errorsAreOneLineWithNonZeroExit() throws {
            let unknown = try sheaf(["frobnicate"])
            #expect(unknown.status == 2)
            #expect(unknown.stderr.hasPrefix("sheaf: error: unknown command 'frobnicate'"))
            #expect(unknown.stderr.split(separator: "\n").count == 1)

            let badOption = try sheaf(["doctor", "--jsn"])
            #expect(badOption.status == 2 && badOption.stderr.contains("--jsn"))

            let noDevice = try sheaf(["bench", "kernels", "--backend", "opencl", "--quick"], env: ["SHEAF_OPENCL_DEVICE": "no-such-gpu"])
            #expect(noDevice.status == 1)
            #expect(noDevice.stderr.contains("no-such-gpu") && noDevice.stderr.split(separator: "\n").count == 1, "\(noDevice.stderr)")

            let badBackend = try sheaf(["bench", "kernels", "--quick", "--backend", "tpu"])
            #expect(badBackend.status == 2 && badBackend.stderr.contains("tpu"))

            let flagValue = try sheaf(["doctor", "--json=1"])
            #expect(flagValue.status == 2 && flagValue.stderr.contains("--json takes no value"))

            let compress = try sheaf(["compress", "no-such-model.gguf", "--out", "x"])
            #expect(compress.status == 1 && compress.stderr.contains("no-such-model.gguf: no such file or folder"), "\(compress.stderr)")
            #expect(compress.stderr.split(separator: "\n").count == 1)
        }

        /// SWSC and RTN options the model cannot take: one line each, a non-zero exit, nothing
        /// written, and before any calibration (each run is quick).
        @Test func impossibleSWSCAndRTNOptionsAreOneLine() throws {
            try RealFixtures.require(RealFixtures.modelPath)
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-cli-swsc-\(getpid())").path
            let cases: [([String], Int32, String)] = [
                (["--method", "swsc", "--clusters", "0"], 1, "--clusters 0 is outside 1...576"),
                (["--method", "swsc", "--clusters", "600", "--matrices", "k"], 1, "--clusters 600 is outside 1...192"),
                (["--method", "swsc", "--clusters", "8", "--residual-rank", "-2"], 1, "--residual-rank -2"),
                (["--method", "swsc", "--clusters", "8", "--residual-rank", "577"], 1, "--residual-rank 577 is outside 0...576"),
                (["--method", "swsc", "--bits", "0.05"], 1, "--bits 0.05 cannot hold one"),
                (["--method", "swsc", "--clusters", "8", "--matrices", "q,attn"], 2, "'attn' is not a linear layer"),
                (["--method", "swsc", "--clusters", "x"], 2, "--clusters expects an integer"),
                (["--method", "rtn", "--bits", "9"], 1, "--bits must be 2 to 8"),
                (["--method", "rtn", "--clusters", "4"], 2, "--clusters is an option of swsc, not of rtn"),
            ]
            for (args, status, expected) in cases {
                let r = try sheaf(["compress", RealFixtures.modelPath, "--out", out] + args)
                #expect(r.status == status && r.stderr.contains(expected), "\(args): \(r.status) \(r.stderr)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
                #expect(!FileManager.default.fileExists(atPath: out))
            }
        }

        /// Head sharing's refusals: a share rate outside [0, 1), a signature or unit that does not
        /// exist, a one-layer model: one line each, before any work, nothing written.
        @Test func impossibleHeadSharingOptionsAreOneLine() throws {
            let one = try TinyModel.write(seed: 47, layers: 1)
            let tiny = try TinyModel.write(seed: 48)
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-cli-heads-\(getpid())").path
            let cases: [(String, [String], Int32, String)] = [
                (tiny, ["--method", "directshare", "--share-rate", "1"], 1, "--share-rate must be in [0, 1), got 1.0"),
                (tiny, ["--method", "postshare", "--share-rate", "-0.5"], 1, "--share-rate must be in [0, 1), got -0.5"),
                (tiny, ["--method", "directshare", "--share-rate", "x"], 2, "--share-rate expects a number in [0, 1), got 'x'"),
                (tiny, ["--method", "directshare", "--signature", "qo"], 2, "--signature must be one of q, k, v, qk, qkv, got 'qo'"),
                (tiny, ["--method", "postshare", "--unit", "layer"], 2, "--unit must be one of kv-group, query-head, got 'layer'"),
                (tiny, ["--method", "rtn", "--share-rate", "0.1"], 2, "--share-rate is an option of directshare, postshare, not of rtn"),
                (one, ["--method", "directshare"], 1, "head sharing needs an earlier layer"),
            ]
            for (model, args, status, expected) in cases {
                let r = try sheaf(["compress", model, "--out", out] + args)
                #expect(r.status == status && r.stderr.contains(expected), "\(args): \(r.status) \(r.stderr)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
                #expect(!FileManager.default.fileExists(atPath: out))
            }
        }

        /// `sheaf sweep` on the real model (small calibration, one evaluation window): every
        /// point in results.json/csv and on the frontier, the spectrum rank map kept, a second run
        /// over more budgets runs only the new point, and a third with other method options adds
        /// its point (keyed and labelled by those options) to the same folder and frontier.
        @Test func sweepWritesTheFrontierAndResumes() throws {
            try RealFixtures.require(RealFixtures.modelPath)
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-cli-sweep-\(getpid())").path
            try? FileManager.default.removeItem(atPath: out)
            defer { try? FileManager.default.removeItem(atPath: out) }
            let reference = out + ".csv"
            try "ratio,perplexity,label\n0.1,182.84,official\n".write(toFile: reference, atomically: true, encoding: .utf8)
            let common = ["sweep", RealFixtures.modelPath, "--methods", "basis-sharing", "--matrices", "q", "--calib-windows", "4",
                          "--calib-len", "128", "--eval-windows", "1", "--no-cache", "--backend", "cpu", "--reference", reference, "--out", out,
                          "--dtype", "f32"]  // f32: the storage of sweeps before --dtype, whose keys carry no dtype
            let first = try sheaf(common + ["--budgets", "0.01", "--allocate", "uniform,spectrum"])
            #expect(first.status == 0, "\(first.stderr.suffix(500))")
            struct Results: Decodable { var densePerplexity: Double; var points: [Point] }
            struct Point: Decodable { var key: String; var achievedRatio: Double; var perplexity: Double }
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let r1 = try decoder.decode(Results.self, from: try Data(contentsOf: URL(fileURLWithPath: out + "/results.json")))
            #expect(r1.points.map(\.key) == ["basis-sharing/uniform/0.01/matrices=q", "basis-sharing/spectrum/0.01/matrices=q"])
            // q is 7.8% of SmolLM2's linear parameters: a budget of 1% of all of them.
            #expect(r1.points.allSatisfy { abs($0.achievedRatio - 0.01) < 0.002 && $0.perplexity > r1.densePerplexity * 0.9 })
            let csv = try String(contentsOfFile: out + "/results.csv", encoding: .utf8)
            #expect(csv.split(separator: "\n").count == 3 && csv.hasPrefix("method,allocation,options,budget,achieved_ratio"))
            let svg = try String(contentsOfFile: out + "/frontier.svg", encoding: .utf8)
            for label in ["basis-sharing (uniform, matrices=q)", "basis-sharing (spectrum, matrices=q)", "official", "dense model"] {
                #expect(svg.contains(label), "frontier lacks \(label)")
            }
            #expect(FileManager.default.fileExists(atPath: out + "/pictures/basis-sharing-spectrum-0.01-matrices=q-ranks.svg"))
            let second = try sheaf(common + ["--budgets", "0.01,0.02", "--allocate", "spectrum"])
            #expect(second.status == 0 && second.stderr.contains("2 points, 1 done, 1 to run"), "\(second.stderr.suffix(500))")
            let r2 = try decoder.decode(Results.self, from: try Data(contentsOf: URL(fileURLWithPath: out + "/results.json")))
            #expect(r2.points.count == 3 && r2.points.last?.key == "basis-sharing/spectrum/0.02/matrices=q")
            let third = try sheaf(common + ["--budgets", "0.01", "--allocate", "spectrum", "--group-size", "1,2"])
            #expect(third.status == 0 && third.stderr.contains("1 point, 0 done, 1 to run"), "\(third.stderr.suffix(500))")
            let r3 = try decoder.decode(Results.self, from: try Data(contentsOf: URL(fileURLWithPath: out + "/results.json")))
            #expect(r3.points.count == 4 && r3.points.last?.key == "basis-sharing/spectrum/0.01/group-size=1,2 matrices=q")
            let svg3 = try String(contentsOfFile: out + "/frontier.svg", encoding: .utf8)
            #expect(svg3.contains("basis-sharing (spectrum, group-size=1,2 matrices=q)") && svg3.contains("basis-sharing (uniform, matrices=q)"))
        }

        /// What a sweep cannot run is one line before any work.
        @Test func impossibleSweepsAreOneLine() throws {
            try RealFixtures.require(RealFixtures.modelPath)
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-cli-sweep-bad-\(getpid())").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try "ratio,perplexity,label\n0.1,abc,official\n".write(toFile: dir + "/bad.csv", atomically: true, encoding: .utf8)
            try "not a sweep".write(toFile: dir + "/other.txt", atomically: true, encoding: .utf8)
            let out = dir + "/out"
            let cases: [([String], Int32, String)] = [
                (["--methods", "basis-sharing", "--budgets", "1.2"], 2, "--budgets: '1.2' is not a fraction in (0, 1)"),
                (["--methods", "basis-sharing", "--budgets", "0"], 2, "--budgets: '0' is not a fraction in (0, 1)"),
                (["--methods", "swsc", "--budgets", "0.2"], 2, "swsc takes a bit budget, not a parameter budget"),
                (["--methods", "nope", "--budgets", "0.2"], 2, "--methods: 'nope' is not a method"),
                (["--methods", "basis-sharing", "--budgets", "0.2", "--allocate", "greedy"], 2, "--allocate: 'greedy' is not an allocator"),
                (["--methods", "basis-sharing", "--budgets", "0.2", "--reference", dir + "/bad.csv"], 1, "line 2 is not 'ratio,perplexity,label'"),
                (["--methods", "directshare", "--budgets", "0.3"], 1, "needs share rate"),
                (["--methods", "basis-sharing", "--budgets", "0.2", "--matrices", "q"], 1, "a budget of 0.2 is more than q_proj hold"),
            ]
            for (args, status, expected) in cases {
                let r = try sheaf(["sweep", RealFixtures.modelPath, "--out", out] + args)
                #expect(r.status == status && r.stderr.contains(expected), "\(args): \(r.status) \(r.stderr)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
                #expect(!FileManager.default.fileExists(atPath: out))
            }
            let taken = try sheaf(["sweep", RealFixtures.modelPath, "--out", dir, "--methods", "basis-sharing", "--budgets", "0.2"])
            #expect(taken.status == 1 && taken.stderr.contains("exists and holds no results.json"), "\(taken.stderr)")
        }

        /// Found by scripts/fuzz: a control character from a broken file (a form feed in
        /// config.json) made the error two "lines" for a reader that splits on it. Errors are one
        /// printable line whatever the input holds.
        @Test func errorsStayOnePrintableLine() throws {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-cli-ff-\(getpid())").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try Data("{\"hidden_size\": \u{0C}\u{2028}}".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
            let r = try sheaf(["inspect", dir])
            #expect(r.status == 1 && r.stderr.hasPrefix("sheaf: error: ") && r.stderr.contains("\\u{C}"), "\(r.stderr)")
            let body = r.stderr.dropLast()  // the one newline that ends the line
            #expect(r.stderr.hasSuffix("\n") && !body.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x2028 }, "\(r.stderr.debugDescription)")
        }

        @Test func helpListsTheCommands() throws {
            let r = try sheaf(["--help"])
            #expect(r.status == 0)
            for word in ["doctor", "bench kernels", "compress MODEL", "export DIR", "--backend", "SHEAF_OPENCL_DEVICE", "SHEAF_THREADS"] {
                #expect(r.stdout.contains(word), "help lacks \(word)")
            }
        }
    }
}
