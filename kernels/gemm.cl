// gemm.cl: float32 matrix products.
//
// gemm_f32: C = alpha * A * B + beta * C with A (M x K) and B (K x N) described by element
//   strides (see common.cl), so the host maps op(A), op(B) and strided views onto them.
//   C (M x N) is row-major with row stride ldc. With beta == 0, C is not read.
//   NDRange: global (ceil(N/TS)*WG, ceil(M/TS)*WG), local (WG, WG).
// transpose_f32: dst (cols x rows, stride ldd) = src (rows x cols, stride lds)^T.
//   NDRange: global (cols, rows), any local size.

__kernel __attribute__((reqd_work_group_size(WG, WG, 1)))
void gemm_f32(const int M, const int N, const int K,
              __global const float *a, const int offA, const int sAm, const int sAk,
              __global const float *b, const int offB, const int sBk, const int sBn,
              __global float *c, const int offC, const int ldc,
              const float alpha, const float beta)
{
    DECLARE_TILES
    const int m0 = get_group_id(1) * TS, n0 = get_group_id(0) * TS;
    float8 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = (float8)(0.0f);
    tile_product(a + offA, sAm, sAk, M, b + offB, sBk, sBn, N, K, m0, n0, As, Bs, acc);

    const int mb = m0 + get_local_id(1) * 8, nb = n0 + get_local_id(0) * 8;
    for (int i = 0; i < 8; ++i) {
        const int m = mb + i;
        if (m >= M) break;
        __global float *row = c + offC + m * ldc + nb;
        if (nb + 8 <= N) {
            float8 v = alpha * acc[i];
            if (beta != 0.0f) v = fma((float8)(beta), vload8(0, row), v);
            vstore8(v, 0, row);
        } else {
            for (int j = 0; j < 8 && nb + j < N; ++j) {
                const float v = alpha * lane8(acc[i], j);
                row[j] = beta != 0.0f ? fma(beta, row[j], v) : v;
            }
        }
    }
}

__kernel void transpose_f32(const int rows, const int cols,
                            __global const float *src, const int offS, const int lds,
                            __global float *dst, const int offD, const int ldd)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c < cols && r < rows) dst[offD + c * ldd + r] = src[offS + r * lds + c];
}
