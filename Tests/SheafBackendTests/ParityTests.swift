import SheafBackend
import SheafCore
import SheafTestSupport
import Testing

/// Every op on every backend against the Float64 reference, at the sizes that catch bugs:
/// 1, 7, 33, 257, non-multiples of the 64 and 16 tiles, strided views, two seeds.
extension BackendSuites {
    @Suite struct OpParity {
        static let shapes: [(Int, Int, Int)] = [
            (1, 1, 1), (7, 33, 1), (33, 7, 257), (257, 65, 33), (65, 129, 257), (1, 257, 7), (129, 1, 65), (17, 100, 300),
        ]

        @Test(arguments: Backends.Name.allCases)
        func gemm(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (i, (m, n, k)) in Self.shapes.enumerated() {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    for strided in [false, true] {
                        let (alpha, beta): (Float, Float) = i % 2 == 0 ? (1, 0) : (-0.75, 1.5)
                        expectPass(try Parity.gemm(
                            be, Backends.reference, m: m, n: n, k: k, transposeA: ta, transposeB: tb,
                            alpha: alpha, beta: beta, strided: strided, seed: UInt64(i * 8 + (ta ? 2 : 0) + (tb ? 1 : 0))))
                    }
                }
            }
        }

        @Test(arguments: Backends.Name.allCases)
        func gram(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (rows, d) in [(1, 1), (7, 7), (33, 1), (1, 33), (257, 33), (100, 257), (300, 65), (129, 130)] {
                for strided in [false, true] {
                    for seed: UInt64 in [1, 2] {
                        expectPass(try Parity.gram(be, Backends.reference, rows: rows, d: d, chunks: 3, strided: strided, seed: seed))
                    }
                }
            }
        }

        @Test(arguments: Backends.Name.allCases)
        func cholesky(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for n in [1, 7, 33, 65] {
                expectPass(try Parity.cholesky(be, Backends.reference, n: n, indefinite: false, seed: UInt64(n)))
                expectPass(try Parity.cholesky(be, Backends.reference, n: n, indefinite: true, seed: UInt64(n)))
            }
        }

        @Test(arguments: Backends.Name.allCases)
        func whiteningProducts(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (m, n) in [(1, 1), (7, 33), (33, 7), (257, 17), (40, 65)] {
                for strided in [false, true] {
                    expectPass(try Parity.multiplyLower(be, Backends.reference, m: m, n: n, strided: strided, seed: UInt64(m + n)))
                    expectPass(try Parity.solveLower(be, Backends.reference, m: m, n: n, strided: strided, seed: UInt64(m * n)))
                }
            }
        }

        @Test(arguments: Backends.Name.allCases)
        func kmeans(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (m, k, d) in [(1, 1, 1), (7, 1, 33), (33, 7, 1), (257, 33, 65), (100, 257, 17), (65, 17, 129)] {
                for strided in [false, true] {
                    expectPass(try Parity.kmeansDistances(be, Backends.reference, m: m, k: k, d: d, strided: strided, seed: UInt64(m)))
                    expectPass(try Parity.kmeansAccumulate(be, Backends.reference, m: m, k: k, d: d, strided: strided, seed: UInt64(k)))
                }
                expectPass(try Parity.kmeansAssign(be, Backends.reference, m: m, k: k, seed: UInt64(d)))
            }
        }

        /// The clustered layer's two ops, at shapes crossing every work-group edge.
        @Test(arguments: Backends.Name.allCases)
        func clusteredLayerOps(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (rows, k, n) in [(1, 1, 1), (7, 1, 33), (33, 7, 1), (65, 33, 257), (3, 192, 576), (2, 257, 17)] {
                expectPass(try Parity.gatherColumns(be, Backends.reference, rows: rows, k: k, n: n, seed: UInt64(n)))
                expectPass(try Parity.sumColumnGroups(be, Backends.reference, rows: rows, n: n, k: k, seed: UInt64(k)))
            }
        }

        /// 16-bit stored weights to float32: every bit pattern class (normal, subnormal, zero,
        /// ±infinity) of float16 and bfloat16, strided, at shapes crossing every work-group edge.
        @Test(arguments: Backends.Name.allCases)
        func convertToFloat32(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (rows, cols) in [(1, 1), (7, 33), (33, 7), (257, 65), (3, 576)] {
                for scalar in [ScalarType.float16, .bfloat16] {
                    expectPass(try Parity.convertToFloat32(be, Backends.reference, rows: rows, cols: cols, scalar: scalar, seed: UInt64(rows * cols)))
                }
            }
            // A float32 source is refused by every backend with the same message.
            let f32 = try be.zeros(.float32, rows: 2, cols: 2)
            #expect { try be.convertToFloat32(f32, into: f32) } throws: { "\($0)".contains("src must be float16 or bfloat16") }
        }

        /// Lloyd's iterations from the same initial centroids reach the same objective.
        @Test(arguments: Backends.Name.allCases)
        func kmeansObjective(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            let points = Matrix<Float>.random(rows: 300, cols: 24, seed: 9)
            var initial = Matrix<Float>.zeros(rows: 12, cols: 24)
            for c in 0..<12 { for j in 0..<24 { initial[c, j] = points[c * 25, j] } }
            let got = try lloydObjective(be, points, initial, iterations: 6)
            let want = try lloydObjective(Backends.reference, points, initial, iterations: 6)
            // Same labels, so only the distances' rounding differs: each minimum errs by γ_{d+3}·
            // (‖x‖² + 2|x·c| + ‖c‖²), which is ≈ 2× the distance for uniform data; the reference's
            // own error is negligible.
            #expect(abs(got - want) <= 2 * Roundoff.gamma(24 + 3, unit: Roundoff.float32) * want, "objective \(got) vs reference \(want)")
        }

        func lloydObjective(_ be: any Backend, _ points: Matrix<Float>, _ initial: Matrix<Float>, iterations: Int) throws -> Double {
            let p = try be.upload(points)
            var centroids = initial
            let m = points.rows, k = initial.rows, d = points.cols
            let labels = try be.makeBuffer(.int32, count: m), minima = try be.makeBuffer(.float32, count: m)
            var objective = 0.0
            for _ in 0..<iterations {
                let dist = try be.zeros(.float32, rows: m, cols: k)
                try be.kmeansDistances(points: p, centroids: be.upload(centroids), into: dist)
                try be.kmeansAssign(distances: dist, labels: labels, minima: minima)
                let sums = try be.zeros(.float64, rows: k, cols: d), counts = try be.makeBuffer(.int32, count: k)
                try be.kmeansAccumulate(points: p, labels: labels, sums: sums, counts: counts)
                let s: Matrix<Double> = try be.download(sums)
                let n: [Int32] = try be.download(counts)
                for c in 0..<k where n[c] > 0 { for j in 0..<d { centroids[c, j] = Float(s[c, j] / Double(n[c])) } }
                objective = (try be.download(minima) as [Float]).reduce(0.0) { $0 + Double($1) }
            }
            return objective
        }
    }
}

/// The forward pass's element-wise and row-wise ops against the reference.
extension BackendSuites {
    @Suite struct ForwardOpParity {
        @Test(arguments: Backends.Name.allCases)
        func rowOps(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (rows, d) in [(1, 1), (7, 33), (33, 257), (2, 576), (65, 100)] {
                for strided in [false, true] {
                    expectPass(try Parity.rmsNorm(be, Backends.reference, rows: rows, d: d, strided: strided, seed: UInt64(d)))
                }
                expectPass(try Parity.siluMultiply(be, Backends.reference, rows: rows, cols: d, seed: UInt64(rows)))
                expectPass(try Parity.add(be, Backends.reference, rows: rows, cols: d, seed: UInt64(rows + d)))
            }
            for (rows, vocabulary) in [(1, 1), (7, 33), (3, 49152), (33, 257)] {
                expectPass(try Parity.crossEntropy(be, Backends.reference, rows: rows, vocabulary: vocabulary))
                for perturbation: Float in [0, 0.01, 0.5] {
                    expectPass(try Parity.klDivergence(be, Backends.reference, rows: rows, vocabulary: vocabulary, perturbation: perturbation))
                }
            }
        }

        /// One token's product with a weight in its stored form, and the expansion of quantised
        /// rows a batched product reads, every backend (the vector and the
        /// portable loops of `cpu` among them) against the reference: lengths 1, 7, 33, 257 and
        /// 1030 (none a multiple of the 8 lanes or the 512-column block but one), every
        /// storage, groups that do not divide the row, accumulating or not.
        @Test(arguments: Backends.Name.allCases)
        func storedGEMV(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (n, m) in [(1, 1), (7, 33), (33, 7), (257, 1030), (64, 512)] {
                for scalar in [ScalarType.float16, .bfloat16] {
                    expectPass(try Parity.gemvStored(be, Backends.reference, n: n, m: m, scalar: scalar, accumulate: n % 2 == 0))
                }
                for (bits, group) in [(8, 64), (4, 32), (4, 5), (3, 10), (6, 1)] {
                    expectPass(try Parity.gemvStored(be, Backends.reference, n: n, m: m, bits: bits, group: group, accumulate: m % 2 == 0))
                    // The expansion a batched product reads, both layouts: exact.
                    for transposed in [false, true] {
                        expectPass(try Parity.dequantizeRows(be, Backends.reference, rows: m, n: n, bits: bits, group: min(group, n), transposed: transposed))
                    }
                }
            }
        }

        /// NaN and infinity carry through a stored GEMV: a NaN input makes every output NaN, an
        /// infinite 16-bit weight its column infinite (or NaN), on every backend.
        @Test(arguments: Backends.Name.allCases)
        func storedGEMVPropagatesNaN(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            let (n, m) = (9, 17)
            var halves = [UInt16](repeating: HalfFloat.floatToF16(0.5), count: n * m)
            halves[3 * m + 4] = 0x7C00  // +infinity at W[3, 4]
            let w = WeightStorage.half(try MatrixView(try withBytesUpload(be, halves, as: .float16), rows: n, cols: m))
            let codes = [UInt8](repeating: 7, count: m * n), ones = Matrix<Float>(rows: m, cols: 1, repeating: 1)
            let q = WeightStorage.quantized(
                codes: try MatrixView(try withBytesUpload(be, codes, as: .uint8), rows: m, cols: n), minima: try be.upload(ones),
                steps: try be.upload(ones), bits: 8, group: n)
            var x = [Float](repeating: 1, count: n)
            let y = try be.zeros(.float32, rows: 1, cols: m)
            try be.gemvStored(try be.upload(Matrix(rows: 1, cols: n, values: x)), w, into: y, accumulate: false)
            let finite: [Float] = try be.download(y.buffer)
            #expect(finite[4] == .infinity && finite.enumerated().allSatisfy { $0.offset == 4 || $0.element == 4.5 }, "\(name): \(finite)")
            x[2] = .nan
            for weight in [w, q] {
                // `upload` refuses NaN by design: the raw bytes go in as an activation computed on the device would.
                try be.gemvStored(try MatrixView(try withBytesUpload(be, x, as: .float32), rows: 1, cols: n), weight, into: y, accumulate: false)
                let out: [Float] = try be.download(y.buffer)
                #expect(out.allSatisfy { $0.isNaN }, "\(name): \(out)")
            }
        }

        @Test(arguments: Backends.Name.allCases)
        func ropeAndAttention(_ name: Backends.Name) throws {
            let be = try Backends.make(name)
            for (tokens, heads, headDim, offset) in [(1, 1, 2, 0), (7, 3, 64, 0), (33, 2, 16, 2000), (257, 1, 8, 5)] {
                expectPass(try Parity.rope(be, Backends.reference, tokens: tokens, heads: heads, headDim: headDim, offset: offset))
            }
            // (queries, keys): prefill (equal), decoding with a cache (1 query), blocks past 128 and 256.
            // Head dimensions that are multiples of 16 take the fused kernel on `cpu`: query blocks
            // of 48 rows in row blocks of 6 (100 = 2·48 + 4), keys in chunks of 128 and panels of 16.
            for (queries, keys, heads, kvHeads, headDim) in [
                (1, 1, 1, 1, 1), (7, 7, 3, 1, 8), (1, 33, 9, 3, 64), (33, 40, 4, 4, 16), (300, 300, 2, 1, 8), (130, 257, 3, 3, 4),
                (100, 100, 4, 2, 32), (50, 177, 2, 1, 64), (5, 300, 3, 1, 16),
            ] {
                expectPass(try Parity.attention(
                    be, Backends.reference, queries: queries, keys: keys, heads: heads, kvHeads: kvHeads, headDim: headDim))
            }
        }
    }
}

/// Uploads raw values of a storage type (16-bit patterns, code bytes).
func withBytesUpload<T>(_ be: any Backend, _ values: [T], as scalar: ScalarType) throws -> DeviceBuffer {
    try values.withUnsafeBytes { raw in try be.uploadBytes(raw, as: scalar) }
}
