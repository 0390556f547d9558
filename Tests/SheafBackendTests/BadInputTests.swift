import Foundation
import SheafBackend
import SheafCore
import SheafTestSupport
import Testing

/// Bad input gets a typed error naming the op and the shapes, never a crash, on every backend.
extension BackendSuites {
    @Suite struct BadInput {
        enum Which: String, CaseIterable, CustomTestStringConvertible, Sendable {
            case cpu, opencl, reference
            var testDescription: String { rawValue }
            func make() throws -> any Backend {
                switch self {
                case .cpu: Backends.cpu
                case .opencl: try Backends.opencl()
                case .reference: Backends.reference
                }
            }
        }

        /// The error thrown by `body`, or nil.
        func error(_ body: () throws -> Void) -> SheafError? {
            do { try body() } catch let e as SheafError { return e } catch { return nil }
            return nil
        }

        @Test(arguments: Which.allCases)
        func emptyAndMismatchedShapes(_ which: Which) throws {
            let be = try which.make()
            let a = try be.upload(Matrix<Float>.random(rows: 3, cols: 4, seed: 1))
            let b = try be.upload(Matrix<Float>.random(rows: 5, cols: 2, seed: 2))
            let c = try be.zeros(.float32, rows: 3, cols: 2)
            let mismatch = error { try be.gemm(a, transposeA: false, b, transposeB: false, into: c, alpha: 1, beta: 0) }
            guard case .shapeMismatch(let op, let detail)? = mismatch else {
                Issue.record("expected shapeMismatch, got \(String(describing: mismatch))")
                return
            }
            #expect(op == "gemm" && detail.contains("(3, 4)") && detail.contains("(5, 2)"), "\(detail)")

            let empty = try MatrixView(be.makeBuffer(.float32, count: 0), rows: 0, cols: 4)
            let e = error { try be.gemm(empty, transposeA: false, a, transposeB: true, into: c, alpha: 1, beta: 0) }
            guard case .shapeMismatch(_, let emptyDetail)? = e else {
                Issue.record("expected shapeMismatch for an empty operand, got \(String(describing: e))")
                return
            }
            #expect(emptyDetail.contains("empty"))

            let x = try be.upload(Matrix<Float>.random(rows: 8, cols: 5, seed: 3))
            let wrongGram = try be.zeros(.float64, rows: 4, cols: 4)
            #expect(error { try be.accumulateGram(x, into: wrongGram) }?.description.contains("accumulateGram") == true)
            let floatGram = try be.zeros(.float32, rows: 5, cols: 5)
            #expect(error { try be.accumulateGram(x, into: floatGram) }?.description.contains("float64") == true)

            let l = try be.upload(Matrix<Double>.identity(3))
            let y = try be.zeros(.float64, rows: 2, cols: 4)
            #expect(error { try be.solveLowerRight(y, l) } != nil)
            let dist = try be.zeros(.float32, rows: 3, cols: 3)
            #expect(error { try be.kmeansDistances(points: a, centroids: b, into: dist) } != nil)
        }

        @Test(arguments: Which.allCases)
        func viewsOutsideTheirBuffer(_ which: Which) throws {
            let be = try which.make()
            let buffer = try be.makeBuffer(.float32, count: 10)
            #expect(error { _ = try MatrixView(buffer, rows: 3, cols: 4) } != nil)
            #expect(error { _ = try MatrixView(buffer, rows: 2, cols: 4, rowStride: 3) } != nil)
            #expect(error { _ = try MatrixView(buffer, rows: 2, cols: 4, rowStride: 5, offset: 2) } != nil)
            #expect(error { _ = try MatrixView(buffer, rows: 2, cols: 4, rowStride: 5, offset: 1) } == nil)
        }

        @Test(arguments: Which.allCases)
        func nonFiniteInputsAreRefused(_ which: Which) throws {
            let be = try which.make()
            let e = error { _ = try be.upload([1, 2, .nan, 4] as [Float], label: "weights") }
            #expect(e == .nonFinite(op: "upload", what: "weights at element 2 (nan)"))
            #expect(error { _ = try be.upload([0, -.infinity] as [Double]) } != nil)
            var a = Parity.spd(4, seed: 1)
            a[1, 2] = .nan
            guard case .nonFinite(let op, _)? = error({ _ = try be.cholesky(a) }) else {
                Issue.record("NaN Gram was not refused")
                return
            }
            #expect(op == "cholesky")
        }

        @Test(arguments: Which.allCases)
        func choleskyRefusesNonSymmetricAndReportsFailure(_ which: Which) throws {
            let be = try which.make()
            var a = Parity.spd(5, seed: 2)
            a[0, 3] += 0.5
            guard case .notSymmetric(_, let detail)? = error({ _ = try be.cholesky(a) }) else {
                Issue.record("non-symmetric matrix was not refused")
                return
            }
            #expect(detail.contains("[0, 3]"))
            #expect(error { _ = try be.cholesky(Matrix<Double>.zeros(rows: 2, cols: 3)) } != nil)
            // A negative epsilon leaves the shifted matrix indefinite: the fallback must fail cleanly.
            var indefinite = Parity.spd(5, seed: 3)
            for i in 0..<5 { indefinite[i, i] -= 10 }
            guard case .notPositiveDefinite? = error({ _ = try be.cholesky(indefinite, epsilon: -1) }) else {
                Issue.record("expected notPositiveDefinite")
                return
            }
        }

        @Test(arguments: Which.allCases)
        func badLabelsAndSingularFactors(_ which: Which) throws {
            let be = try which.make()
            let points = try be.upload(Matrix<Float>.random(rows: 4, cols: 3, seed: 4))
            let sums = try be.zeros(.float64, rows: 2, cols: 3), counts = try be.makeBuffer(.int32, count: 2)
            let e = error { try be.kmeansAccumulate(points: points, labels: be.upload([0, 1, 2, 0] as [Int32]), sums: sums, counts: counts) }
            #expect(e?.description.contains("label 2 of point 2") == true, "\(String(describing: e))")
            var singular = Matrix<Double>.identity(3)
            singular[1, 1] = 0
            let y = try be.upload(Matrix<Double>(rows: 2, cols: 3, repeating: 1))
            #expect(error { try be.solveLowerRight(y, be.upload(singular)) }?.description.contains("[1, 1]") == true)
        }

        @Test func buffersOfAnotherBackendAreRefused() throws {
            let foreign = try Backends.reference.upload(Matrix<Float>.random(rows: 2, cols: 2, seed: 1))
            let mine = try Backends.cpu.upload(Matrix<Float>.random(rows: 2, cols: 2, seed: 1))
            let out = try Backends.cpu.zeros(.float32, rows: 2, cols: 2)
            #expect(error { try Backends.cpu.gemm(foreign, transposeA: false, mine, transposeB: false, into: out, alpha: 1, beta: 0) } != nil)
        }

        @Test func kernelBuildFailureCarriesTheLog() throws {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sheaf-badkernels-\(getpid())")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            let kernels = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../kernels")
            for f in ["common", "gram", "whiten", "kmeans"] {
                try FileManager.default.copyItem(at: kernels.appendingPathComponent("\(f).cl"), to: dir.appendingPathComponent("\(f).cl"))
            }
            try "__kernel void gemm_f32(__global float *c) { c[0] = undefined_symbol_xyz; }\n"
                .write(to: dir.appendingPathComponent("gemm.cl"), atomically: true, encoding: .utf8)
            let be = try OpenCLBackend(kernelDirectory: dir.path)
            let a = try be.upload(Matrix<Float>.random(rows: 2, cols: 2, seed: 1)), c = try be.zeros(.float32, rows: 2, cols: 2)
            let e = error { try be.gemm(a, transposeA: false, a, transposeB: false, into: c, alpha: 1, beta: 0) }
            guard case .kernelBuild(let file, _, let log)? = e else {
                Issue.record("expected kernelBuild, got \(String(describing: e))")
                return
            }
            #expect(file == "gemm" && log.contains("undefined_symbol_xyz"))
            // The gram kernel of the same directory still builds and runs.
            let g = try be.zeros(.float64, rows: 2, cols: 2)
            try be.accumulateGram(a, into: g)
        }

        @Test func explicitOpenCLNeverFallsBack() throws {
            let e = error { _ = try BackendSelection.make(.opencl, options: .init(openCLDevice: "no-such-device-zzz")) }
            guard case .backendUnavailable(let name, let reason)? = e else {
                Issue.record("expected backendUnavailable, got \(String(describing: e))")
                return
            }
            #expect(name == "opencl" && reason.contains("no-such-device-zzz"))
            #expect(error { _ = try BackendSelection.make(.opencl, options: .init(openCLDevice: "99")) } != nil)
        }
    }
}
