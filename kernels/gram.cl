// gram.cl: Gram accumulation G += X^T X in Float64.
//
// gram_accumulate: X (rows x d) float32, row stride ldx; G (d x d) double, row stride ldg.
//   Each work-group computes one TS x TS tile of X^T X in float32 over all rows of this
//   chunk (tile_product with A = X^T, B = X), then adds it into G in double. Only tiles on
//   or above the diagonal are computed; each off-diagonal tile is also added, transposed,
//   into its mirror, so G stays the full symmetric matrix.
//   NDRange: global (ceil(d/TS)*WG, ceil(d/TS)*WG), local (WG, WG).

#pragma OPENCL EXTENSION cl_khr_fp64 : enable

__kernel __attribute__((reqd_work_group_size(WG, WG, 1)))
void gram_accumulate(const int rows, const int d,
                     __global const float *x, const int offX, const int ldx,
                     __global double *g, const int offG, const int ldg)
{
    DECLARE_TILES
    const int m0 = get_group_id(1) * TS, n0 = get_group_id(0) * TS;
    if (n0 < m0) return;   // lower tiles come from the mirror of the upper ones
    float8 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = (float8)(0.0f);
    // A(m, r) = X(r, m): sAm = 1, sAk = ldx.  B(r, n) = X(r, n): sBk = ldx, sBn = 1.
    tile_product(x + offX, 1, ldx, d, x + offX, ldx, 1, d, rows, m0, n0, As, Bs, acc);

    const int mb = m0 + get_local_id(1) * 8, nb = n0 + get_local_id(0) * 8;
    g += offG;
    for (int i = 0; i < 8; ++i) {
        const int m = mb + i;
        if (m >= d) break;
        for (int j = 0; j < 8 && nb + j < d; ++j) {
            const double v = (double)lane8(acc[i], j);
            g[m * ldg + nb + j] += v;
            if (m0 != n0) g[(nb + j) * ldg + m] += v;
        }
    }
}
