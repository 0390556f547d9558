// forward.cl: element-wise and row-wise ops of the transformer forward pass (float32).
// Matrices are row-major with a row stride (ld) and an element offset (off).
//
// rms_norm: out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w. One work-group of RW work-items
//   per row; the sum of squares is reduced in local memory. NDRange: global (RW, rows), local (RW, 1).
// rope: in-place rotary embedding, rotate_half layout: in each head, element i < hd/2 pairs with
//   i + hd/2; angle = (offset + t) * invFreq[i] (inverse frequencies computed on the host in
//   double). NDRange: global (hd/2, heads, tokens).
// causal_softmax: row r of scores (rows x keys) keeps its first r + shift + 1 entries, which
//   become a max-subtracted softmax; the rest become 0. One work-group of RW per row.
//   NDRange: global (RW, rows), local (RW, 1).
// silu_mul: out = g / (1 + exp(-g)) * u. NDRange: global (cols, rows).
// add_inplace: y += x. NDRange: global (cols, rows).
// cross_entropy: nll[r] = logsumexp(logits[r]) - logits[r, target[r]], max-subtracted, the
//   sum of exponentials in double. One work-group of RW per row. NDRange: global (RW, rows),
//   local (RW, 1).
// kl_divergence: kl[r] = KL(softmax(a[r]) || softmax(b[r])) = S/Za - ma + mb - log Za + log Zb,
//   m the row maxima, Z the max-subtracted sums of exponentials, S = sum e^(a - ma) (a - b);
//   the sums in double, clamped at 0. One work-group of RW per row: global (RW, rows), local (RW, 1).
// half_to_float, bfloat16_to_float: out[r, c] = the float value of the 16-bit src[r, c] (IEEE
//   binary16 through vload_half, core in OpenCL 1.2 without cl_khr_fp16; bfloat16 as the top
//   half of a float's bits), src and out (rows, cols). NDRange: global (cols, rows): consecutive
//   work-items read consecutive 2-byte elements and write consecutive floats (coalesced).
// dequantize_rows: W[r, c] = minima[r, c/group] + q * steps[r, c/group] for the bits-wide code q
//   at bits c*bits.. of row r of the uint8 codes (little-endian bit stream per row), written to
//   out (rows, n) or, transposed, out (n, rows). Product and sum rounded apart (FP_CONTRACT OFF),
//   as the host codec computes them. NDRange: global (n, rows), or (rows, n) when transposed, so
//   that consecutive work-items write consecutive floats (coalesced) either way.
// gemv_half, gemv_bfloat16: y[j] (+)= sum_i x[i] * W[i, j] for one row x (n) and a 16-bit W (n, m):
//   a decoded token's product with a weight kept 16-bit. NDRange: global (m): work-item j walks
//   column j, so consecutive work-items read consecutive 2-byte weights of each row (coalesced).
// gemv_quantized: y[j] (+)= sum_i x[i] * (minima[j, g] + q[j, i] * steps[j, g]), g = i / group, for a
//   quantised T (m, n) as dequantize_rows reads it. NDRange: global (m), one row of T per
//   work-item (a first version: a work-group per row would coalesce the code reads).
// gather_columns: out[r, i] = src[r, labels[i]] (0 for a label outside 0..k-1), src (rows, k),
//   out (rows, n). NDRange: global (n, rows): consecutive work-items write consecutive outputs of
//   one row (coalesced); their reads hit the k columns of the same row, which stay in cache.
// sum_column_groups: out[r, c] = sum of src[r, members[t]] for t in starts[c] .. starts[c+1]-1,
//   in that order; src (rows, n), out (rows, k). NDRange: global (k, rows). No atomics: each
//   work-item owns one output and reads its group's member list.

#pragma OPENCL EXTENSION cl_khr_fp64 : enable

#ifndef RW
#define RW 64   // work-items per row for the row reductions; a power of two
#endif

// Tree reduction of one value per work-item over the row's work-group (RW items, local
// scratch of RW elements); every item gets the result. One definition per type and operator.
#define DEFINE_ROW_REDUCTION(NAME, TYPE, COMBINE)                              \
    inline TYPE NAME(TYPE v, __local TYPE *scratch)                           \
    {                                                                          \
        const int lid = get_local_id(0);                                       \
        scratch[lid] = v;                                                      \
        barrier(CLK_LOCAL_MEM_FENCE);                                          \
        for (int s = RW / 2; s > 0; s >>= 1) {                                 \
            if (lid < s) scratch[lid] = COMBINE(scratch[lid], scratch[lid + s]); \
            barrier(CLK_LOCAL_MEM_FENCE);                                      \
        }                                                                      \
        const TYPE result = scratch[0];                                        \
        barrier(CLK_LOCAL_MEM_FENCE);                                          \
        return result;                                                         \
    }

#define ADD(a, b) ((a) + (b))
DEFINE_ROW_REDUCTION(reduce_sum, float, ADD)
DEFINE_ROW_REDUCTION(reduce_max, float, max)
DEFINE_ROW_REDUCTION(reduce_sum_double, double, ADD)

__kernel __attribute__((reqd_work_group_size(RW, 1, 1)))
void rms_norm(const int d, __global const float *x, const int offX, const int ldx,
              __global const float *w, const int offW, const float eps,
              __global float *out, const int offO, const int ldo)
{
    __local float scratch[RW];
    const int r = get_group_id(1), lid = get_local_id(0);
    __global const float *row = x + offX + r * ldx;
    float partial = 0.0f;
    for (int c = lid; c < d; c += RW) partial = fma(row[c], row[c], partial);
    const float scale = rsqrt(reduce_sum(partial, scratch) / d + eps);
    __global float *dst = out + offO + r * ldo;
    for (int c = lid; c < d; c += RW) dst[c] = row[c] * scale * w[offW + c];
}

__kernel void rope(const int heads, const int hd, __global float *x, const int offX, const int ldx,
                   const int positionOffset, __global const double *invFreq)
{
    const int i = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    const int halfDim = hd / 2;
    if (i >= halfDim || h >= heads) return;
    const double angle = (double)(positionOffset + t) * invFreq[i];
    const float c = (float)cos(angle), s = (float)sin(angle);
    __global float *base = x + offX + t * ldx + h * hd;
    const float a = base[i], b = base[i + halfDim];
    base[i] = a * c - b * s;
    base[i + halfDim] = b * c + a * s;
}

__kernel __attribute__((reqd_work_group_size(RW, 1, 1)))
void causal_softmax(const int keys, const int shift, __global float *scores, const int offS, const int lds)
{
    __local float scratch[RW];
    const int r = get_group_id(1), lid = get_local_id(0);
    __global float *row = scores + offS + r * lds;
    const int visible = min(r + shift + 1, keys);
    float m = -INFINITY;
    for (int j = lid; j < visible; j += RW) m = max(m, row[j]);
    m = reduce_max(m, scratch);
    float partial = 0.0f;
    for (int j = lid; j < visible; j += RW) {
        const float e = exp(row[j] - m);
        row[j] = e;
        partial += e;
    }
    const float inverse = 1.0f / reduce_sum(partial, scratch);
    for (int j = lid; j < keys; j += RW) row[j] = j < visible ? row[j] * inverse : 0.0f;
}

__kernel void silu_mul(const int rows, const int cols,
                       __global const float *g, const int offG, const int ldg,
                       __global const float *u, const int offU, const int ldu,
                       __global float *out, const int offO, const int ldo)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= cols || r >= rows) return;
    const float gv = g[offG + r * ldg + c];
    out[offO + r * ldo + c] = gv / (1.0f + exp(-gv)) * u[offU + r * ldu + c];
}

__kernel void add_inplace(const int rows, const int cols,
                          __global const float *x, const int offX, const int ldx,
                          __global float *y, const int offY, const int ldy)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= cols || r >= rows) return;
    y[offY + r * ldy + c] += x[offX + r * ldx + c];
}

__kernel void half_to_float(const int rows, const int cols,
                            __global const half *src, const int offS, const int lds,
                            __global float *out, const int offO, const int ldo)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= cols || r >= rows) return;
    out[offO + r * ldo + c] = vload_half(offS + r * lds + c, src);
}

__kernel void bfloat16_to_float(const int rows, const int cols,
                                __global const ushort *src, const int offS, const int lds,
                                __global float *out, const int offO, const int ldo)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= cols || r >= rows) return;
    out[offO + r * ldo + c] = as_float((uint)src[offS + r * lds + c] << 16);
}

__kernel void dequantize_rows(const int rows, const int n, const int bits, const int group, const int transposed,
                              __global const uchar *codes, const int offC, const int ldc,
                              __global const float *minima, const int offM, const int ldm,
                              __global const float *steps, const int offS, const int lds,
                              __global float *out, const int offO, const int ldo)
{
#pragma OPENCL FP_CONTRACT OFF
    const int r = transposed ? get_global_id(0) : get_global_id(1);
    const int c = transposed ? get_global_id(1) : get_global_id(0);
    if (c >= n || r >= rows) return;
    const int bit = c * bits;
    __global const uchar *row = codes + offC + r * ldc;
    uint word = row[bit >> 3];
    if ((bit & 7) + bits > 8) word |= (uint)row[(bit >> 3) + 1] << 8;
    const uint q = (word >> (bit & 7)) & ((1u << bits) - 1u);
    const int g = c / group;
    const float scaled = (float)q * steps[offS + r * lds + g];
    const float value = minima[offM + r * ldm + g] + scaled;
    if (transposed) out[offO + c * ldo + r] = value; else out[offO + r * ldo + c] = value;
}

__kernel void gemv_half(const int n, const int m, const int accumulate,
                        __global const float *x, const int offX,
                        __global const half *w, const int offW, const int ldw,
                        __global float *y, const int offY)
{
    const int j = get_global_id(0);
    if (j >= m) return;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[offX + i] * vload_half(offW + i * ldw + j, w);
    y[offY + j] = accumulate ? y[offY + j] + sum : sum;
}

__kernel void gemv_bfloat16(const int n, const int m, const int accumulate,
                            __global const float *x, const int offX,
                            __global const ushort *w, const int offW, const int ldw,
                            __global float *y, const int offY)
{
    const int j = get_global_id(0);
    if (j >= m) return;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[offX + i] * as_float((uint)w[offW + i * ldw + j] << 16);
    y[offY + j] = accumulate ? y[offY + j] + sum : sum;
}

__kernel void gemv_quantized(const int n, const int m, const int bits, const int group, const int accumulate,
                             __global const float *x, const int offX,
                             __global const uchar *codes, const int offC, const int ldc,
                             __global const float *minima, const int offM, const int ldm,
                             __global const float *steps, const int offS, const int lds,
                             __global float *y, const int offY)
{
    const int j = get_global_id(0);
    if (j >= m) return;
    __global const uchar *row = codes + offC + j * ldc;
    const uint mask = (1u << bits) - 1u;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        const int bit = i * bits, g = i / group;
        uint word = row[bit >> 3];
        if ((bit & 7) + bits > 8) word |= (uint)row[(bit >> 3) + 1] << 8;
        const float q = (float)((word >> (bit & 7)) & mask);
        sum += x[offX + i] * (minima[offM + j * ldm + g] + q * steps[offS + j * lds + g]);
    }
    y[offY + j] = accumulate ? y[offY + j] + sum : sum;
}

__kernel void gather_columns(const int rows, const int n, const int k,
                             __global const float *src, const int offS, const int lds,
                             __global const int *labels,
                             __global float *out, const int offO, const int ldo)
{
    const int i = get_global_id(0), r = get_global_id(1);
    if (i >= n || r >= rows) return;
    const int c = labels[i];
    out[offO + r * ldo + i] = (c >= 0 && c < k) ? src[offS + r * lds + c] : 0.0f;
}

__kernel void sum_column_groups(const int rows, const int k, const int n,
                                __global const float *src, const int offS, const int lds,
                                __global const int *members, __global const int *starts,
                                __global float *out, const int offO, const int ldo)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= k || r >= rows) return;
    __global const float *row = src + offS + r * lds;
    float sum = 0.0f;
    // members holds n entries: a malformed start never reads past it.
    for (int t = max(starts[c], 0); t < min(starts[c + 1], n); ++t) {
        const int j = members[t];
        if (j >= 0 && j < n) sum += row[j];
    }
    out[offO + r * ldo + c] = sum;
}

__kernel __attribute__((reqd_work_group_size(RW, 1, 1)))
void cross_entropy(const int vocabulary, __global const float *logits, const int offL, const int ldl,
                   __global const int *targets, __global float *nll)
{
    __local float scratch[RW];
    __local double scratchDouble[RW];
    const int r = get_group_id(1), lid = get_local_id(0);
    __global const float *row = logits + offL + r * ldl;
    float m = -INFINITY;
    for (int c = lid; c < vocabulary; c += RW) m = max(m, row[c]);
    m = reduce_max(m, scratch);
    double partial = 0.0;
    for (int c = lid; c < vocabulary; c += RW) partial += (double)exp(row[c] - m);
    const double total = reduce_sum_double(partial, scratchDouble);
    if (lid == 0) nll[r] = (float)((double)m + log(total) - (double)row[targets[r]]);
}

__kernel __attribute__((reqd_work_group_size(RW, 1, 1)))
void kl_divergence(const int vocabulary, __global const float *a, const int offA, const int lda,
                   __global const float *b, const int offB, const int ldb, __global float *kl)
{
    __local float scratch[RW];
    __local double scratchDouble[RW];
    const int r = get_group_id(1), lid = get_local_id(0);
    __global const float *rowA = a + offA + r * lda;
    __global const float *rowB = b + offB + r * ldb;
    float ma = -INFINITY, mb = -INFINITY;
    for (int c = lid; c < vocabulary; c += RW) {
        ma = max(ma, rowA[c]);
        mb = max(mb, rowB[c]);
    }
    ma = reduce_max(ma, scratch);
    mb = reduce_max(mb, scratch);
    double za = 0.0, zb = 0.0, s = 0.0;
    for (int c = lid; c < vocabulary; c += RW) {
        const float x = rowA[c], y = rowB[c], ea = exp(x - ma);
        za += (double)ea;
        zb += (double)exp(y - mb);
        s += (double)(ea * (x - y));
    }
    za = reduce_sum_double(za, scratchDouble);
    zb = reduce_sum_double(zb, scratchDouble);
    s = reduce_sum_double(s, scratchDouble);
    if (lid == 0) kl[r] = (float)max(0.0, s / za - (double)ma + (double)mb - log(za) + log(zb));
}
