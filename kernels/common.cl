// common.cl: tunables and the tiled float32 product shared by gemm.cl, gram.cl and kmeans.cl.
// The host prepends this file to every kernel file (the CMake syntax checks -include it).
//
// Tiling: a work-group of WG x WG work-items (WG = TS / 8) computes a TS x TS block of the
// output. Work-item (tx, ty) = (local id 0, local id 1) owns an 8 x 8 block: rows
// m0 + ty*8 + i (i = 0..7), held as acc[i], a float8 over columns n0 + tx*8 .. +7.
// The reduction dimension advances TK steps between barriers.
//
// Operands are described by element strides so one routine serves every transpose:
//   A(m, k) = a[m*sAm + k*sAk]  (M x K),   B(k, n) = b[k*sBk + n*sBn]  (K x N).
//
// USE_LOCAL = 1 (GPUs): each step stages TK x TS slices of A and B in local memory with
//   coalesced loads (memory-contiguous index fastest), zero-padded at the edges.
// USE_LOCAL = 0 (CPU drivers such as PoCL, which run a work-group's items one after another
//   on one core): operands are read straight from global memory, already cached; the barrier
//   after each TK step keeps the whole work-group on the same TK rows while they are hot in
//   L1/L2. B must be row-contiguous (sBn == 1): the host transposes it first otherwise.

#ifndef TS
#define TS 64   // output tile edge per work-group; a multiple of 8
#endif
#ifndef TK
#define TK 16   // reduction steps per barrier
#endif
#ifndef USE_LOCAL
#define USE_LOCAL 1
#endif
#define WG (TS / 8)   // work-items per tile edge

#define FMA8(x0, x1, x2, x3, x4, x5, x6, x7)              \
    acc[0] = fma((float8)(x0), bv, acc[0]);               \
    acc[1] = fma((float8)(x1), bv, acc[1]);               \
    acc[2] = fma((float8)(x2), bv, acc[2]);               \
    acc[3] = fma((float8)(x3), bv, acc[3]);               \
    acc[4] = fma((float8)(x4), bv, acc[4]);               \
    acc[5] = fma((float8)(x5), bv, acc[5]);               \
    acc[6] = fma((float8)(x6), bv, acc[6]);               \
    acc[7] = fma((float8)(x7), bv, acc[7]);

// acc[i] += sum over k < K of A(m0 + ty*8 + i, k) * B(k, n0 + tx*8 .. +7).
// Every work-item of the group must call it (it contains barriers).
inline void tile_product(__global const float *a, const int sAm, const int sAk, const int M,
                         __global const float *b, const int sBk, const int sBn, const int N,
                         const int K, const int m0, const int n0,
                         __local float *As, __local float *Bs, float8 *acc)
{
    const int tx = get_local_id(0), ty = get_local_id(1);
#if USE_LOCAL
    const int lid = ty * WG + tx;
    for (int kt = 0; kt < K; kt += TK) {
        for (int e = lid; e < TS * TK; e += WG * WG) {
            const int am = sAk == 1 ? e / TK : e % TS;
            const int ak = sAk == 1 ? e % TK : e / TS;
            const int gm = m0 + am, gak = kt + ak;
            As[ak * TS + am] = (gm < M && gak < K) ? a[gm * sAm + gak * sAk] : 0.0f;
            const int bn = sBn == 1 ? e % TS : e / TK;
            const int bk = sBn == 1 ? e / TS : e % TK;
            const int gn = n0 + bn, gbk = kt + bk;
            Bs[bk * TS + bn] = (gn < N && gbk < K) ? b[gbk * sBk + gn * sBn] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TK; ++k) {
            const float8 av = vload8(0, As + k * TS + ty * 8);
            const float8 bv = vload8(0, Bs + k * TS + tx * 8);
            FMA8(av.s0, av.s1, av.s2, av.s3, av.s4, av.s5, av.s6, av.s7)
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#else
    // Rows past M and columns past N are clamped to the last valid one: their results are
    // computed but never stored.
    const int mb = m0 + ty * 8, nb = n0 + tx * 8;
    const int r0 = min(mb + 0, M - 1) * sAm, r1 = min(mb + 1, M - 1) * sAm;
    const int r2 = min(mb + 2, M - 1) * sAm, r3 = min(mb + 3, M - 1) * sAm;
    const int r4 = min(mb + 4, M - 1) * sAm, r5 = min(mb + 5, M - 1) * sAm;
    const int r6 = min(mb + 6, M - 1) * sAm, r7 = min(mb + 7, M - 1) * sAm;
    const int fullB = nb + 8 <= N;
    for (int kt = 0; kt < K; kt += TK) {
        const int kEnd = min(kt + TK, K);
        if (fullB) {
            for (int k = kt; k < kEnd; ++k) {
                const __global float *ak = a + k * sAk;
                const float8 bv = vload8(0, b + k * sBk + nb);
                FMA8(ak[r0], ak[r1], ak[r2], ak[r3], ak[r4], ak[r5], ak[r6], ak[r7])
            }
        } else {
            for (int k = kt; k < kEnd; ++k) {
                const __global float *ak = a + k * sAk, *bk = b + k * sBk;
                const float8 bv = (float8)(bk[min(nb + 0, N - 1)], bk[min(nb + 1, N - 1)],
                                           bk[min(nb + 2, N - 1)], bk[min(nb + 3, N - 1)],
                                           bk[min(nb + 4, N - 1)], bk[min(nb + 5, N - 1)],
                                           bk[min(nb + 6, N - 1)], bk[min(nb + 7, N - 1)]);
                FMA8(ak[r0], ak[r1], ak[r2], ak[r3], ak[r4], ak[r5], ak[r6], ak[r7])
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#endif
}

// Local tiles for tile_product, declared in each kernel (OpenCL 1.2 allows __local arrays
// only at kernel scope).
#if USE_LOCAL
#define DECLARE_TILES __local float As[TS * TK]; __local float Bs[TS * TK];
#else
#define DECLARE_TILES __local float *As = 0; __local float *Bs = 0;
#endif

// Element j (0..7) of a float8.
inline float lane8(const float8 v, const int j)
{
    switch (j) {
    case 0: return v.s0; case 1: return v.s1; case 2: return v.s2; case 3: return v.s3;
    case 4: return v.s4; case 5: return v.s5; case 6: return v.s6; default: return v.s7;
    }
}
