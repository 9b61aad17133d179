/* The non-linear 4-bit types IQ4_NL (blocks of 32, one fp16 scale) and IQ4_XS (super-blocks of 256: an fp16 scale
   and eight 6-bit sub-block scales): quants index the 16 values of tk_iq4nl_values. Quantizers bit-exact with
   ggml's quantize_iq4_nl / quantize_iq4_xs (what ggml_quantize_chunk runs, with or without an importance matrix),
   dequantizers, and the scalar dot products: IQ4_NL's in ggml's generic order (ggml_vec_dot_iq4_nl_q8_0_generic),
   IQ4_XS's in the super-block order of llama.cpp's tiled prompt path (below). Same float rules as quants_k.c: fp32,
   no contraction. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <string.h>

#include "quants.h"

#define IQ4_NTRY 7 /* scale candidates tried on each side of the first guess */
#if defined(__x86_64__) || defined(__i386__)
#define IQ4_X86 1 /* the searches' AVX2 versions exist (quants_iq4_fit_avx2.c) */
#else
#define IQ4_X86 0
#endif

const int8_t tk_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* Index of the value nearest x (ties to the upper one unless strictly nearer the lower), by bisection. */
static inline int nearest_value(const int8_t *val, float x) {
    if (x <= val[0]) return 0;
    if (x >= val[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (x < val[mid]) hi = mid;
        else lo = mid;
    }
    return x - val[hi - 1] < val[hi] - x ? hi - 1 : hi;
}

/* Σw·q·x and Σw·q² of the block quantized with inverse scale id */
static inline void value_sums(const float *x, const float *w, int n, float id, float *sumqx, float *sumq2) {
    float sqx = 0, sq2 = 0;
    for (int j = 0; j < n; ++j) {
        int l = nearest_value(tk_iq4nl_values, id * x[j]);
        float q = tk_iq4nl_values[l];
        sqx += w[j] * q * x[j];
        sq2 += w[j] * q * q;
    }
    *sumqx = sqx;
    *sumq2 = sq2;
}

/* value_sums of a block of 32 for the 2·IQ4_NTRY + 1 grids (itry + values[0])/max, in itry order */
static void try_sums(const float *xb, const float *w, float max, int simd, float *sumqx, float *sumq2) {
#if IQ4_X86
    if (simd) {
        tk_iq4_try_sums_avx2(xb, w, max, IQ4_NTRY, sumqx, sumq2);
        return;
    }
#endif
    (void)simd;
    for (int itry = -IQ4_NTRY; itry <= IQ4_NTRY; ++itry)
        value_sums(xb, w, 32, (itry + tk_iq4nl_values[0]) / max, &sumqx[itry + IQ4_NTRY], &sumq2[itry + IQ4_NTRY]);
}

/* L[j] = the index of the value nearest id·x[j], for n (a multiple of 8) elements */
static void value_indices(const float *x, float id, int n, int simd, uint8_t *L) {
#if IQ4_X86
    if (simd) {
        tk_iq4_indices_avx2(x, id, n, L);
        return;
    }
#endif
    (void)simd;
    for (int j = 0; j < n; ++j) L[j] = (uint8_t)nearest_value(tk_iq4nl_values, id * x[j]);
}

/* The scale of one block of 32 (weights w): the signed max mapped to -127, refitted by weighted least squares, then
   the best of 15 grids (values[0] + itry)/max by (Σw·q·x)²/Σw·q². 0 for a (nearly) zero block. */
static float fit_block_scale(const float *xb, const float *w, int simd) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
        float ax = fabsf(xb[j]);
        if (ax > amax) { amax = ax; max = xb[j]; }
    }
    if (amax < GROUP_MAX_EPS) return 0;
    const int8_t *values = tk_iq4nl_values;
    float d = -max / values[0];
    float sumqx, sumq2;
    value_sums(xb, w, 32, 1 / d, &sumqx, &sumq2);
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    float tqx[2 * IQ4_NTRY + 1], tq2[2 * IQ4_NTRY + 1];
    try_sums(xb, w, max, simd, tqx, tq2);
    for (int i = 0; i < 2 * IQ4_NTRY + 1; ++i) {
        if (tq2[i] > 0 && tqx[i] * tqx[i] > best * tq2[i]) {
            d = tqx[i] / tq2[i];
            best = d * tqx[i];
        }
    }
    return d;
}

/* One IQ4_NL block (n = 32) or IQ4_XS super-block (n = 256) as ggml's quantize_row_iq4_nl_impl with ntry 7: the
   weights are qw·sqrt(sigma2 + x²) with an importance matrix, x² without. */
static void quantize_iq4(int n, const float *x, const float *qw, int simd, tk_half *dh, uint8_t *q4,
                         uint16_t *scales_h, uint8_t *scales_l) {
    float scales[QK_K / 32], weight[32];
    uint8_t L[QK_K];
    float sigma2 = 0;
    for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
    sigma2 *= 2.f / n;
    memset(q4, 0, (size_t)n / 2);
    *dh = tk_fp32_to_fp16(0.f);

    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < n / 32; ++ib) {
        const float *xb = x + 32 * ib;
        for (int j = 0; j < 32; ++j)
            weight[j] = qw ? qw[32 * ib + j] * sqrtf(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
        const float d = scales[ib] = fit_block_scale(xb, weight, simd);
        if (fabsf(d) > amax_scale) { amax_scale = fabsf(d); max_scale = d; }
    }

    if (n > 32) {
        /* 6-bit sub-block scales against the largest (mapped to -32), quants re-derived from the fp32 scales */
        *scales_h = 0;
        const float d = -max_scale / 32;
        *dh = tk_fp32_to_fp16(d);
        const float id = d ? 1 / d : 0.f;
        for (int ib = 0; ib < n / 32; ++ib) {
            int l = tk_nearest_int(id * scales[ib]);
            l = l < -32 ? -32 : l > 31 ? 31 : l;
            const float dl = d * l;
            const float idl = dl ? 1 / dl : 0.f;
            value_indices(x + 32 * ib, idl, 32, simd, L + 32 * ib);
            l += 32;
            if (ib % 2 == 0) scales_l[ib / 2] = (uint8_t)(l & 0xF);
            else scales_l[ib / 2] |= (uint8_t)((l & 0xF) << 4);
            *scales_h |= (uint16_t)((l >> 4) << 2 * (ib % 8));
        }
    } else {
        *dh = tk_fp32_to_fp16(scales[0]);
        const float id = scales[0] ? 1 / scales[0] : 0;
        value_indices(x, id, 32, simd, L);
    }
    /* per 32 elements: low nibbles the first 16, high nibbles the next 16 */
    for (int i = 0; i < n / 32; ++i)
        for (int j = 0; j < 16; ++j) q4[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

void quantize_row_iq4_nl_imatrix(const float *x, void *vy, int64_t k, const float *qw) {
    block_iq4_nl *y = vy;
    const int simd = IQ4_X86 && tk_use_simd();
    for (int64_t i = 0; i < k / QK; ++i)
        quantize_iq4(QK, x + QK * i, qw ? qw + QK * i : NULL, simd, &y[i].d, y[i].qs, NULL, NULL);
}

void quantize_row_iq4_xs_imatrix(const float *x, void *vy, int64_t k, const float *qw) {
    block_iq4_xs *y = vy;
    const int simd = IQ4_X86 && tk_use_simd();
    for (int64_t i = 0; i < k / QK_K; ++i)
        quantize_iq4(QK_K, x + QK_K * i, qw ? qw + QK_K * i : NULL, simd, &y[i].d, y[i].qs, &y[i].scales_h,
                     y[i].scales_l);
}

void quantize_row_iq4_nl(const float *x, void *y, int64_t k) { quantize_row_iq4_nl_imatrix(x, y, k, NULL); }
void quantize_row_iq4_xs(const float *x, void *y, int64_t k) { quantize_row_iq4_xs_imatrix(x, y, k, NULL); }

/* 6-bit scale of sub-block ib of an IQ4_XS super-block, minus 32 */
static inline int iq4_xs_scale(const block_iq4_xs *x, int ib) {
    return (((x->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((x->scales_h >> 2 * ib) & 3) << 4)) - 32;
}

void dequantize_row_iq4_nl(const void *vx, float *y, int64_t k) {
    const block_iq4_nl *x = vx;
    for (int64_t i = 0; i < k / QK; ++i, y += QK) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK / 2; ++j) {
            y[j] = d * tk_iq4nl_values[x[i].qs[j] & 0xF];
            y[j + QK / 2] = d * tk_iq4nl_values[x[i].qs[j] >> 4];
        }
    }
}

void dequantize_row_iq4_xs(const void *vx, float *y, int64_t k) {
    const block_iq4_xs *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        const uint8_t *qs = x[i].qs;
        for (int ib = 0; ib < QK_K / 32; ++ib, y += 32, qs += 16) {
            const float dl = d * iq4_xs_scale(&x[i], ib);
            for (int j = 0; j < 16; ++j) {
                y[j] = dl * tk_iq4nl_values[qs[j] & 0xF];
                y[j + 16] = dl * tk_iq4nl_values[qs[j] >> 4];
            }
        }
    }
}

/* Σ q8·value over 32 elements whose values are the nibbles of 16 bytes (low nibbles first) */
static inline int iq4_dot32(const uint8_t *qs, const int8_t *q8) {
    int sumi1 = 0, sumi2 = 0;
    for (int j = 0; j < 16; ++j) {
        sumi1 += q8[j] * tk_iq4nl_values[qs[j] & 0xF];
        sumi2 += q8[j + 16] * tk_iq4nl_values[qs[j] >> 4];
    }
    return sumi1 + sumi2;
}

void tk_vec_dot_iq4_nl_q8_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    float sumf = 0;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        const float d = tk_fp16_to_fp32(y[ib].d) * tk_fp16_to_fp32(x[ib].d);
        sumf += d * iq4_dot32(x[ib].qs, y[ib].qs);
    }
    *s = sumf;
}

/* IQ4_XS in super-block order (llama.cpp's tiled prompt path, ggml-cpu/tiled): per super-block the exact integer
   Σ scale·Σ q8·value over its eight sub-blocks (|.| < 2^28), then one fused multiply-add fma(d_x·d_y, isum, sumf),
   super-blocks in order (as Q4_0's kernels, quants_legacy.c). Any integer summation order gives these bits: the SIMD
   kernels and the tiles (rows in lanes) meet them. */
void tk_vec_dot_iq4_xs_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq4_xs *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        int32_t isum = 0;
        for (int ib = 0; ib < QK_K / 32; ++ib)
            isum += iq4_xs_scale(&x[i], ib) * iq4_dot32(x[i].qs + 16 * ib, y[i].qs + 32 * ib);
        sumf = fmaf(tk_fp16_to_fp32(x[i].d) * y[i].d, (float)isum, sumf);
    }
    *s = sumf;
}
