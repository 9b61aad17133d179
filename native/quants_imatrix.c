/* Quantizers guided by an importance matrix (llama-quantize --imatrix): ggml's quantize_*_impl paths with
   quant_weights, bit for bit. qw holds one non-negative weight per column of the row (per expert for a stacked
   expert tensor: the caller hands each row its expert's slice). The types whose ggml quantizer ignores the weights
   (Q8_0, F16, ...) have no entry: tk_quantize_row_imatrix returns NULL for them.

   The fits below differ from the reference ones in quants_k.c where ggml's differ: weights from the matrix, a
   stretched-grid search of 37 steps from -0.9 (make_qkx3_quants, whose rounding of out-of-range values is guarded),
   and the super-block scales fitted by weighted least squares (make_qp_quants for Q2_K/Q4_K/Q5_K, make_qx_quants for
   Q3_K). Same float rules as quants_k.c: fp32, ggml's evaluation order, no contraction. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <string.h>

#include "quants.h"
#include "quants_iq1.h"
#include "quants_iq3.h"
#include "quants_iq2.h"



#if defined(__x86_64__) || defined(__i386__)
#define AFFINE_X86 1 /* the grid searches of fit_symmetric_weighted and fit_affine_weighted on AVX2 (quants_imatrix_avx2.c) */
#else
#define AFFINE_X86 0
#endif

/* Symmetric weighted fit x ≈ scale·(L − nmax), L − nmax in [−nmax, nmax−1] (make_qx_quants, rmse_type 1, weights
   w): the grid mapping the signed max to −nmax and its 18 neighbours −(nmax + 0.1·is)/max, keeping the one with the
   largest (Σw·x·l)²/Σw·l². Returns the least-squares scale of the kept grid. */
static float fit_symmetric_weighted(int n, int nmax, const float *x, const float *w, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = imax(-nmax, imin(nmax - 1, tk_nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    /* the 18 grids' sums (independent of one another), then the sequential choice */
    float try_lx[18], try_l2[18];
#if AFFINE_X86
    if (n <= 32 && tk_use_simd()) tk_symmetric_tries_avx2(n, nmax, x, w, max, try_lx, try_l2);
    else
#endif
    for (int k = 0; k < 18; ++k) {
        iscale = -(nmax + 0.1f * (k < 9 ? k - 9 : k - 8)) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = imax(-nmax, imin(nmax - 1, tk_nearest_int(iscale * x[i])));
            sumlx += w[i] * x[i] * l;
            suml2 += w[i] * l * l;
        }
        try_lx[k] = sumlx;
        try_l2[k] = suml2;
    }
    int kept = -1;
    for (int k = 0; k < 18; ++k) {
        if (try_l2[k] > 0 && try_lx[k] * try_lx[k] > best * try_l2[k]) {
            kept = k;
            scale = try_lx[k] / try_l2[k];
            best = scale * try_lx[k];
        }
    }
    if (kept >= 0) {
        iscale = -(nmax + 0.1f * (kept < 9 ? kept - 9 : kept - 8)) / max;
        for (int i = 0; i < n; ++i) L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, tk_nearest_int(iscale * x[i]))));
    }
    return scale;
}

/* One stretched grid of fit_affine_weighted, inverse scale iscale over x − min: its quants in Laux, the determinant
   D of the least-squares system and, when D > 0, the refitted scale and min (min ≤ 0: a positive one is replaced by
   0 and the scale refitted alone) and their weighted squared error. */
static void affine_step(int n, int nmax, const float *x, const float *w, float min, float iscale, float sum_w,
                        float sum_x, uint8_t *Laux, float *D, float *scale, float *the_min, float *err) {
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
        const float v = iscale * (x[i] - min);
        const int l = v > 0 ? tk_nearest_int(v < nmax ? v : (float)nmax) : 0;
        Laux[i] = (uint8_t)l;
        sum_l += w[i] * l;
        sum_l2 += w[i] * l * l;
        sum_xl += w[i] * l * x[i];
    }
    *D = sum_w * sum_l2 - sum_l * sum_l;
    *scale = *the_min = *err = 0;
    if (*D > 0) {
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / *D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / *D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float e = 0;
        for (int i = 0; i < n; ++i) {
            float diff = this_scale * Laux[i] + this_min - x[i];
            e += w[i] * (diff * diff);
        }
        *scale = this_scale;
        *the_min = this_min;
        *err = e;
    }
}

/* Weighted affine fit x ≈ scale·L − the_min, L in [0, nmax] (make_qkx3_quants with weights, squared error): the
   min/max grid, then nstep+1 stretched grids (nmax + rmin + rdelta·is) refitted by weighted least squares, keeping
   the smallest weighted error. Values the stretched grid maps out of range round to 0 or nmax without overflow. */
static float fit_affine_weighted(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                                 uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max <= min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; ++i) {
        int l = tk_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * L[i] + min - x[i];
        best_err += w[i] * (diff * diff);
    }
    /* the grids in order; min (and so the grid) changes after each improvement. The SIMD path tries up to 8 grids at
       once with the current min, keeps the first that improves and starts again after it. */
    const int simd = AFFINE_X86 && n <= 32 && tk_use_simd();
    int is = 0;
    while (is <= nstep) {
        float D, this_scale, this_min, err;
#if AFFINE_X86
        if (simd) {
            const int count = imin(8, nstep + 1 - is);
            const int k = tk_affine_steps_avx2(n, nmax, x, w, min, max, sum_w, sum_x, rmin, rdelta, is, count,
                                               best_err, L, &scale, &min, &best_err);
            is += k + (k < count);
            continue;
        }
#endif
        affine_step(n, nmax, x, w, min, (rmin + rdelta * is + nmax) / (max - min), sum_w, sum_x, Laux, &D,
                    &this_scale, &this_min, &err);
        if (D > 0 && err < best_err) {
            memcpy(L, Laux, (size_t)n);
            best_err = err;
            scale = this_scale;
            min = this_min;
        }
        ++is;
    }
    *the_min = -min;
    return scale;
}

/* Non-negative values x ≈ scale·L, L in [0, nmax] (make_qp_quants: the super-block scales of Q2_K/Q4_K/Q5_K, each
   sub-block scale weighted by its sub-block's total weight): the best of 9 grids by weighted squared error, then up
   to five passes of coordinate descent on (Σw·x·l)²/Σw·l². Returns Σw·x·l/Σw·l². L keeps ggml's uint8 narrowing. */
float fit_scales_weighted(int n, int nmax, const float *x, uint8_t *L, const float *w) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)tk_nearest_int(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale * L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = imin(nmax, tk_nearest_int(iscale_is * x[i]));
            float diff = x[i] - scale_is * l;
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = imin(nmax, tk_nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float slx = sumlx - w[i] * x[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = imin(nmax, tk_nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w[i] * x[i] * new_l;
                    sl2 += w[i] * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* weight[l] = qw[l]·sqrt(sigma2 + x[l]²), the per-element weight every imatrix path but Q6_K's uses */
static inline void element_weights(int n, const float *x, const float *qw, float sigma2, float *weight) {
    for (int l = 0; l < n; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[l] * x[l]);
}

static inline float sum_squares(const float *x, int64_t n) {
    float s = 0;
    for (int64_t j = 0; j < n; ++j) s += x[j] * x[j];
    return s;
}

/* ---- legacy types: sigma2 is the mean square of the whole row ---- */

static void quantize_row_q4_0_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q4_0 *y = vy;
    const float sigma2 = sum_squares(x, n) / n;
    float weight[QK];
    int8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib, x += QK, qw += QK) {
        element_weights(QK, x, qw, sigma2, weight);
        y[ib].d = tk_fp32_to_fp16(fit_symmetric_weighted(QK, 8, x, weight, L));
        for (int j = 0; j < QK / 2; ++j) y[ib].qs[j] = (uint8_t)(L[j] | (L[j + QK / 2] << 4));
    }
}

static void quantize_row_q5_0_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q5_0 *y = vy;
    const float sigma2 = sum_squares(x, n) / n;
    float weight[QK];
    int8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib, x += QK, qw += QK) {
        element_weights(QK, x, qw, sigma2, weight);
        y[ib].d = tk_fp32_to_fp16(fit_symmetric_weighted(QK, 16, x, weight, L));
        pack_q5((const uint8_t *)L, y[ib].qs, y[ib].qh);
    }
}

/* Q4_1 (nmax 15) and Q5_1 (nmax 31): an affine fit per block; d and -min stored as fp16, L in 0..nmax */
static void fit_block_affine(const float *x, const float *qw, float sigma2, int nmax, uint8_t L[QK], tk_half *d,
                             tk_half *m) {
    float weight[QK], min;
    uint8_t Laux[QK];
    element_weights(QK, x, qw, sigma2, weight);
    *d = tk_fp32_to_fp16(fit_affine_weighted(QK, nmax, x, weight, L, &min, Laux, -0.9f, 0.05f, 36));
    *m = tk_fp32_to_fp16(-min);
}

static void quantize_row_q4_1_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q4_1 *y = vy;
    const float sigma2 = sum_squares(x, n) / n;
    uint8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib, x += QK, qw += QK) {
        fit_block_affine(x, qw, sigma2, 15, L, &y[ib].d, &y[ib].m);
        for (int j = 0; j < QK / 2; ++j) y[ib].qs[j] = (uint8_t)(L[j] | (L[j + QK / 2] << 4));
    }
}

static void quantize_row_q5_1_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q5_1 *y = vy;
    const float sigma2 = sum_squares(x, n) / n;
    uint8_t L[QK];
    for (int64_t ib = 0; ib < n / QK; ++ib, x += QK, qw += QK) {
        fit_block_affine(x, qw, sigma2, 31, L, &y[ib].d, &y[ib].m);
        pack_q5(L, y[ib].qs, y[ib].qh);
    }
}

/* ---- k-quants: sigma2 from each super-block ---- */

static void quantize_row_q2_K_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q2_K *y = vy;
    uint8_t L[QK_K], Laux[16], Ls[QK_K / 16], Lm[QK_K / 16];
    float mins[QK_K / 16], scales[QK_K / 16], sw[QK_K / 16], weight[16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        const float sigma2 = sum_squares(x, QK_K) / QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            element_weights(16, x + 16 * j, qw + 16 * j, sigma2, weight);
            sw[j] = 0;
            for (int l = 0; l < 16; ++l) sw[j] += weight[l];
            scales[j] = fit_affine_weighted(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
        }
        const float dm = fit_scales_weighted(QK_K / 16, 15, scales, Ls, sw);
        const float mm = fit_scales_weighted(QK_K / 16, 15, mins, Lm, sw);
        y[i].d = tk_fp32_to_fp16(dm);
        y[i].dmin = tk_fp32_to_fp16(mm);
        for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
        q2_K_finish(x, L, &y[i]);
    }
}

static void quantize_row_q3_K_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q3_K *y = vy;
    int8_t L[QK_K], Ls[QK_K / 16];
    float scales[QK_K / 16], weight[16], sw[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            element_weights(16, x + 16 * j, qw + 16 * j, sigma2, weight);
            float sumw = 0;
            for (int l = 0; l < 16; ++l) sumw += weight[l];
            sw[j] = sumw;
            scales[j] = fit_symmetric_weighted(16, 4, x + 16 * j, weight, L + 16 * j);
        }
        /* the 16 scales fitted as 6-bit signed values (stored +32) and packed as the reference packs them */
        memset(y[i].scales, 0, sizeof y[i].scales);
        const float d_block = fit_symmetric_weighted(QK_K / 16, 32, scales, sw, Ls);
        for (int j = 0; j < QK_K / 16; ++j) {
            int l = Ls[j];
            if (j < 8) y[i].scales[j] = (uint8_t)(l & 0xF);
            else y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
            l >>= 4;
            y[i].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
        }
        y[i].d = tk_fp32_to_fp16(d_block);
        q3_K_finish(x, L, &y[i]);
    }
}

/* Q4_K (nmax 15) and Q5_K (nmax 31): the sub-block fits, their 6-bit scales and mins, and the final quants in L.
   Q5_K clamps the 6-bit values to 63, Q4_K stores them as fitted (as ggml). */
static void fit_superblock_k4(const float *x, const float *qw, int nmax, uint8_t L[QK_K], uint8_t scales_out[12],
                              tk_half *d, tk_half *dmin) {
    uint8_t Laux[32], Ls[QK_K / 32], Lm[QK_K / 32];
    float weight[32], sw[QK_K / 32], mins[QK_K / 32], scales[QK_K / 32];
    const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
    for (int j = 0; j < QK_K / 32; ++j) {
        element_weights(32, x + 32 * j, qw + 32 * j, sigma2, weight);
        float sumw = 0;
        for (int l = 0; l < 32; ++l) sumw += weight[l];
        sw[j] = sumw;
        scales[j] = fit_affine_weighted(32, nmax, x + 32 * j, weight, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
    }
    const float d_block = fit_scales_weighted(QK_K / 32, 63, scales, Ls, sw);
    const float m_block = fit_scales_weighted(QK_K / 32, 63, mins, Lm, sw);
    memset(scales_out, 0, K_SCALE_SIZE);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t ls = Ls[j], lm = Lm[j];
        if (nmax == 31) {
            ls = (uint8_t)imin(63, ls);
            lm = (uint8_t)imin(63, lm);
        }
        pack_scale_min_k4(j, ls, lm, scales_out);
    }
    *d = tk_fp32_to_fp16(d_block);
    *dmin = tk_fp32_to_fp16(m_block);
    k4_requantize(x, nmax, scales_out, *d, *dmin, L);
}

static void quantize_row_q4_K_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q4_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        fit_superblock_k4(x, qw, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        q4_K_pack_quants(L, &y[i]);
    }
}

static void quantize_row_q5_K_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q5_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        fit_superblock_k4(x, qw, 31, L, y[i].scales, &y[i].d, &y[i].dmin);
        q5_K_pack_quants(L, &y[i]);
    }
}

/* Q6_K weighs its sub-block fits by the matrix itself (no sigma2 term) */
static void quantize_row_q6_K_imatrix(const float *x, void *vy, int64_t n, const float *qw) {
    block_q6_K *y = vy;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K, qw += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const float scale = fit_symmetric_weighted(16, 32, x + 16 * ib, qw + 16 * ib, L + 16 * ib);
            scales[ib] = scale;
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
        }
        q6_K_finish(x, scales, max_scale, max_abs_scale, L, &y[i]);
    }
}

tk_quantize_row_imatrix_fn tk_quantize_row_imatrix(int type) {
    switch (type) {
    case TK_Q4_0: return quantize_row_q4_0_imatrix;
    case TK_Q4_1: return quantize_row_q4_1_imatrix;
    case TK_Q5_0: return quantize_row_q5_0_imatrix;
    case TK_Q5_1: return quantize_row_q5_1_imatrix;
    case TK_Q2_K: return quantize_row_q2_K_imatrix;
    case TK_Q3_K: return quantize_row_q3_K_imatrix;
    case TK_Q4_K: return quantize_row_q4_K_imatrix;
    case TK_Q5_K: return quantize_row_q5_K_imatrix;
    case TK_Q6_K: return quantize_row_q6_K_imatrix;
    case TK_IQ3_XXS: return quantize_row_iq3_xxs_imatrix;
    case TK_IQ3_S: return quantize_row_iq3_s_imatrix;
    case TK_IQ1_S: return quantize_row_iq1_s_imatrix;
    case TK_IQ1_M: return quantize_row_iq1_m_imatrix;
    case TK_IQ2_XXS: return quantize_row_iq2_xxs_imatrix;
    case TK_IQ2_XS: return quantize_row_iq2_xs_imatrix;
    case TK_IQ2_S: return quantize_row_iq2_s_imatrix;
    case TK_IQ4_NL: return quantize_row_iq4_nl_imatrix;
    case TK_IQ4_XS: return quantize_row_iq4_xs_imatrix;
    default: return NULL;
    }
}
