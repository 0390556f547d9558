// kmeans.cl: the steps of batched K-means over points P (m x d) and centroids C (k x d).
//
// row_sq_norms: out[r] = sum_j src[r, j]^2 for src (rows x cols). NDRange: global (rows).
// kmeans_distances: D[i, c] = max(0, |p_i|^2 + |c_c|^2 - 2 p_i . c_c), a GEMM-shaped tiled
//   product (common.cl) with A = P (sAm = ldp, sAk = 1) and B(j, c) = C(c, j) given by
//   strides (sBk, sBn): (1, ldc) for C itself, (k, 1) for a transposed copy (CPU drivers).
//   NDRange: global (ceil(k/TS)*WG, ceil(m/TS)*WG), local (WG, WG).
// kmeans_argmin: labels[i] = argmin_c D[i, c] (lowest index on ties), minima[i] = D[i, label].
//   NDRange: global (m).
// kmeans_sums: sums[c, j] = sum of P[i, j] over the points of cluster c, in double. The host
//   lists point indices grouped by cluster (order) with cluster c at order[starts[c] ..
//   starts[c+1]), so each work-item reads only its cluster's rows, coalesced along j.
//   NDRange: global (d, k).

#pragma OPENCL EXTENSION cl_khr_fp64 : enable

__kernel void row_sq_norms(const int rows, const int cols,
                           __global const float *src, const int offS, const int lds,
                           __global float *out)
{
    const int r = get_global_id(0);
    if (r >= rows) return;
    __global const float *row = src + offS + r * lds;
    float sum = 0.0f;
    for (int j = 0; j < cols; ++j) sum = fma(row[j], row[j], sum);
    out[r] = sum;
}

__kernel __attribute__((reqd_work_group_size(WG, WG, 1)))
void kmeans_distances(const int m, const int k, const int d,
                      __global const float *p, const int offP, const int ldp,
                      __global const float *c, const int offC, const int sBk, const int sBn,
                      __global const float *pNorms, __global const float *cNorms,
                      __global float *dist, const int offD, const int ldd)
{
    DECLARE_TILES
    const int m0 = get_group_id(1) * TS, n0 = get_group_id(0) * TS;
    float8 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = (float8)(0.0f);
    tile_product(p + offP, ldp, 1, m, c + offC, sBk, sBn, k, d, m0, n0, As, Bs, acc);

    const int mb = m0 + get_local_id(1) * 8, nb = n0 + get_local_id(0) * 8;
    for (int i = 0; i < 8; ++i) {
        const int row = mb + i;
        if (row >= m) break;
        const float pn = pNorms[row];
        for (int j = 0; j < 8 && nb + j < k; ++j) {
            const float v = pn + cNorms[nb + j] - 2.0f * lane8(acc[i], j);
            dist[offD + row * ldd + nb + j] = max(v, 0.0f);
        }
    }
}

__kernel void kmeans_argmin(const int m, const int k,
                            __global const float *dist, const int offD, const int ldd,
                            __global int *labels, __global float *minima)
{
    const int i = get_global_id(0);
    if (i >= m) return;
    __global const float *row = dist + offD + i * ldd;
    int best = 0;
    float bestValue = row[0];
    for (int c = 1; c < k; ++c) {
        if (row[c] < bestValue) { bestValue = row[c]; best = c; }
    }
    labels[i] = best;
    minima[i] = bestValue;
}

__kernel void kmeans_sums(const int d, const int k,
                          __global const float *p, const int offP, const int ldp,
                          __global const int *order, __global const int *starts,
                          __global double *sums, const int offS, const int lds)
{
    const int j = get_global_id(0), c = get_global_id(1);
    if (j >= d || c >= k) return;
    double sum = 0.0;
    for (int t = starts[c]; t < starts[c + 1]; ++t) sum += (double)p[offP + order[t] * ldp + j];
    sums[offS + c * lds + j] = sum;
}
