// whiten.cl: products and solves with a lower-triangular Cholesky factor L (n x n), in double.
//
// lower_multiply: out (m x n, double) = W (m x n, float32) * L. L[p, j] = 0 for p < j, so
//   the reduction for output column tile j0 starts at row j0 of L. Square WT x WT tiles
//   staged in local memory; one output per work-item.
//   NDRange: global (ceil(n/WT)*WT, ceil(m/WT)*WT), local (WT, WT).
// lower_solve_right: Y <- Y * L^-1 in place (Y m x n, double), by back substitution on each
//   row: z_j = (y_j - sum_{p>j} z_p L[p, j]) / L[j, j], last column first, each z_j's terms
//   subtracted from the columns left of it as soon as it is known. One work-item per row; the
//   work-items of a group read the same L element at each step (a broadcast).
//   NDRange: global (m).

#pragma OPENCL EXTENSION cl_khr_fp64 : enable

#ifndef WT
#define WT 16
#endif

__kernel __attribute__((reqd_work_group_size(WT, WT, 1)))
void lower_multiply(const int m, const int n,
                    __global const float *w, const int offW, const int ldw,
                    __global const double *l, const int offL, const int ldl,
                    __global double *out, const int offO, const int ldo)
{
    __local double Ws[WT][WT + 1];
    __local double Ls[WT][WT + 1];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int j0 = get_group_id(0) * WT, i0 = get_group_id(1) * WT;
    const int row = i0 + ty, col = j0 + tx;
    double sum = 0.0;
    for (int p0 = j0; p0 < n; p0 += WT) {
        Ws[ty][tx] = (row < m && p0 + tx < n) ? (double)w[offW + row * ldw + p0 + tx] : 0.0;
        Ls[ty][tx] = (p0 + ty < n && col < n) ? l[offL + (p0 + ty) * ldl + col] : 0.0;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int p = 0; p < WT; ++p) sum = fma(Ws[ty][p], Ls[p][tx], sum);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < m && col < n) out[offO + row * ldo + col] = sum;
}

__kernel void lower_solve_right(const int m, const int n,
                                __global double *y, const int offY, const int ldy,
                                __global const double *l, const int offL, const int ldl)
{
    const int r = get_global_id(0);
    if (r >= m) return;
    __global double *row = y + offY + r * ldy;
    l += offL;
    // Right-looking: once z_j is final, remove its share from the columns left of it. This
    // reads row j of L front to back (contiguous; the same element in every work-item at
    // once) instead of walking a column of L with stride ldl, which missed cache on every
    // step for n in the thousands.
    for (int j = n - 1; j >= 0; --j) {
        const double z = row[j] / l[j * ldl + j];
        row[j] = z;
        __global const double *lj = l + j * ldl;
        for (int p = 0; p < j; ++p) row[p] -= z * lj[p];
    }
}
