/* k-quants (super-blocks of 256): reference quantizers and dequantizers, bit-exact with ggml's no-imatrix path.
   Algorithms: ../shared/docs/ggml-reference.md §1.0 and §1.3.

   Bit-exactness rules followed throughout (do not "simplify" them away):
   - Every float expression keeps ggml's scalar evaluation order and types: fp32 everywhere (no double), sums
     accumulated left to right, products grouped left to right (w*x*l is (w*x)*l), divisions kept as divisions
     (x/d is not x*(1/d)), and no fused multiply-add (see the pragma below).
   - Integer results are narrowed exactly where ggml narrows them (e.g. Q4_K/Q5_K sub-block scales are truncated
     to uint8_t *before* the min(63, .) clamp, Q3_K's to int8_t before its clamp). With finite inputs the
     values stay in range so this seems unobservable, but it keeps degenerate (inf/nan) cases identical too.
   - The super-block scales are stored as fp16 and the quants are re-derived from the decoded fp16 value.
     Sub-blocks whose decoded scale is zero keep the quants of the first (fitting) pass. */

/* Never contract a*b+c into an FMA in this file, whatever the build flags (-ffp-contract=fast with -mfma would
   change ~5-30% of blocks of Q2_K/Q4_K/Q5_K/Q6_K). GCC's pragma must precede the includes to cover their inline
   helpers. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <string.h>

#include "quants.h"



/* ------------------------------------------------------------------------------------------------------------
   Fitting helpers
   ------------------------------------------------------------------------------------------------------------ */

/* Element of largest magnitude, sign kept (the first one wins on ties); its magnitude goes to *amax. */
static inline float signed_absmax(const float *x, int n, float *amax) {
    float max = 0, am = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > am) { am = ax; max = x[i]; }
    }
    *amax = am;
    return max;
}

/* Weighted affine fit x ≈ scale·L − the_min with L in [0, nmax] (ggml's make_qkx2_quants).
   Starts from the plain min/max grid, then tries nstep+1 stretched grids (iscale numerator nmax + rmin +
   rdelta·is), refitting scale and min by weighted least squares on each, and keeps the grid with the smallest
   weighted error (|err| if use_mad, else err²). The returned min is clamped to ≤ 0 and reported negated. */
static float fit_affine_quants(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                               uint8_t *Laux, float rmin, float rdelta, int nstep, int use_mad) {
    /* range and weighted sums (sum_w, sum_x accumulate from element 0 on) */
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float wi = w[i];
        sum_w += wi;
        sum_x += wi * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }

    /* first guess: the grid spanning [min, max] */
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = tk_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)clampi(l, 0, nmax);
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += w[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }

    /* search: re-grid, least-squares refit of (scale, min), keep the strictly better one */
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = clampi(tk_nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            float wi = w[i];
            sum_l += wi * l;
            sum_l2 += wi * l * l;
            sum_xl += wi * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {          /* a positive offset is not representable: refit through the origin */
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += w[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Symmetric fit x ≈ scale·(L − nmax), L − nmax in [−nmax, nmax−1], weights x² (ggml's make_q3_quants with
   do_rmse). Starts from the grid that maps the signed max to −nmax, then does up to five passes of
   coordinate descent, each moving one quant to the value that maximises (Σw·x·l)²/Σw·l². Returns Σw·x·l/Σw·l². */
static float fit_symmetric_q3(int n, int nmax, const float *x, int8_t *L) {
    float amax;
    float max = signed_absmax(x, n, &amax);
    if (amax < GROUP_MAX_EPS) {          /* all (nearly) zero */
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;

    /* initial rounding and its weighted sums */
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = clampi(tk_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }

    /* coordinate descent: re-round each quant against the fit of the others */
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = clampi(tk_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Symmetric fit x ≈ scale·(L − nmax) with weights x² (ggml's make_qx_quants, rmse_type 1, no imatrix), for one
   sub-block of 16. Tries the grid mapping the signed max to −nmax and 18 neighbours (−(nmax + 0.1·is)/max,
   is = ±1..±9), keeping the one with the largest (Σw·x·l)²/Σw·l². Returns the least-squares scale of the kept grid.
   The per-element products are formed in separate loops (so they vectorize) but the sums are still accumulated
   in element order, with ggml's grouping (w·x)·l and (w·l)·l. */
#define RMSE_N 16
/* quants of one trial grid, as floats (exact: |l| <= nmax) since every use of them is in float arithmetic */
static inline void rmse_round(const float *x, float iscale, int nmax, float *l) {
    for (int i = 0; i < RMSE_N; ++i) l[i] = (float)clampi(tk_nearest_int(iscale * x[i]), -nmax, nmax - 1);
}

static inline void rmse_sums(const float *w, const float *wx, const float *l, float *sumlx, float *suml2) {
    float plx[RMSE_N], pl2[RMSE_N];
    for (int i = 0; i < RMSE_N; ++i) {
        plx[i] = wx[i] * l[i];
        pl2[i] = w[i] * l[i] * l[i];
    }
    float slx = 0, sl2 = 0;
    for (int i = 0; i < RMSE_N; ++i) {
        slx += plx[i];
        sl2 += pl2[i];
    }
    *sumlx = slx;
    *suml2 = sl2;
}

static float fit_symmetric_rmse(int nmax, const float *x, int8_t *L) {
    float amax;
    float max = signed_absmax(x, RMSE_N, &amax);
    if (amax < GROUP_MAX_EPS) {          /* all (nearly) zero */
        for (int i = 0; i < RMSE_N; ++i) L[i] = 0;
        return 0.f;
    }
    float w[RMSE_N], wx[RMSE_N];         /* weights x² and w·x, the same for every trial grid */
    for (int i = 0; i < RMSE_N; ++i) {
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
    }
    float l[RMSE_N];
    float sumlx, suml2;
    rmse_round(x, -nmax / max, nmax, l);
    rmse_sums(w, wx, l, &sumlx, &suml2);
    for (int i = 0; i < RMSE_N; ++i) L[i] = (int8_t)((int)l[i] + nmax);
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        rmse_round(x, -(nmax + 0.1f * is) / max, nmax, l);
        rmse_sums(w, wx, l, &sumlx, &suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < RMSE_N; ++i) L[i] = (int8_t)((int)l[i] + nmax);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* ------------------------------------------------------------------------------------------------------------
   Scale packings
   ------------------------------------------------------------------------------------------------------------ */

/* Q4_K/Q5_K: eight 6-bit (scale, min) pairs in 12 bytes. Sub-blocks 0..3 sit in the low 6 bits of bytes 0..3
   (scale) and 4..7 (min); sub-blocks 4..7 keep their low nibbles in bytes 8..11 and their top two bits in bits
   6..7 of bytes 0..3 (scale) and 4..7 (min). `scales` must be zeroed before packing sub-blocks 4..7. */
void pack_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t *scales) {
    if (j < 4) {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
        scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
    }
}

static inline void unpack_scale_min_k4(int j, const uint8_t *scales, uint8_t *ls, uint8_t *lm) {
    if (j < 4) {
        *ls = scales[j] & 63;
        *lm = scales[j + 4] & 63;
    } else {
        *ls = (uint8_t)((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
        *lm = (uint8_t)((scales[j + 4] >> 4) | ((scales[j - 0] >> 6) << 4));
    }
}

/* Q3_K: sixteen 6-bit scales (stored +32) in 12 bytes: low nibble of scale j in bytes 0..7 (j < 8: low nibble
   of byte j; j ≥ 8: high nibble of byte j−8), top two bits in byte 8 + j%4 at bit 2·(j/4). Returns the signed
   scale (6-bit value − 32). */
static inline int unpack_q3_scale(int j, const uint8_t *scales) {
    int lo = j < 8 ? (scales[j] & 0xF) : (scales[j - 8] >> 4);
    int hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (int8_t)(lo | (hi << 4)) - 32;
}

/* Q2_K/Q3_K low bits: per 128-element half h, byte 32h + l holds elements 128h + l, +32, +64, +96 (2 bits each,
   at bit 0, 2, 4, 6). L must already be in 0..3. */
void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
   Q2_K: 16 sub-blocks of 16, x ≈ d·sc_j·q − dmin·m_j, q in 0..3, sc_j and m_j 4 bits each
   ------------------------------------------------------------------------------------------------------------ */

/* Steps 3-4 (also of the imatrix quantizer): re-derive the quants from the decoded fp16 scales (sub-blocks whose
   scale decodes to 0 keep L), then pack them. */
void q2_K_finish(const float *x, uint8_t L[QK_K], block_q2_K *y) {
    const float d_all = tk_fp16_to_fp32(y->d), dmin_all = tk_fp16_to_fp32(y->dmin);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = d_all * (y->scales[j] & 0xF);
        if (!d) continue;
        const float dm = dmin_all * (y->scales[j] >> 4);
        for (int ii = 0; ii < 16; ++ii) {
            L[16 * j + ii] = (uint8_t)clampi(tk_nearest_int((x[16 * j + ii] + dm) / d), 0, 3);
        }
    }
    pack_2bit(L, y->qs);
}

/* Steps 2-4 (also of the NEON quantizer, quants_k_neon.c): the sub-block scales (low nibbles) and mins (high
   nibbles) quantized to 4 bits against their maxima, d/dmin, then q2_K_finish. */
void q2_K_scales_finish(const float *x, const float scales[QK_K / 16], const float mins[QK_K / 16], uint8_t L[QK_K],
                        block_q2_K *y) {
    const float q4scale = 15.f;
    float max_scale = 0, max_min = 0;     /* both non-negative as the min is subtracted */
    for (int j = 0; j < QK_K / 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }

    /* 2. quantize the sub-block scales (low nibbles) and mins (high nibbles) to 4 bits against their maxima */
    if (max_scale > 0) {
        float iscale = q4scale / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = (uint8_t)tk_nearest_int(iscale * scales[j]);
        y->d = tk_fp32_to_fp16(max_scale / q4scale);
    } else {
        for (int j = 0; j < QK_K / 16; ++j) y->scales[j] = 0;
        y->d = tk_fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
        float iscale = q4scale / max_min;
        /* shifted unsigned: a min rounded below 0 (rows with non-finite values) is no undefined behaviour */
        for (int j = 0; j < QK_K / 16; ++j)
            y->scales[j] |= (uint8_t)((unsigned)tk_nearest_int(iscale * mins[j]) << 4);
        y->dmin = tk_fp32_to_fp16(max_min / q4scale);
    } else {
        y->dmin = tk_fp32_to_fp16(0.f);
    }

    q2_K_finish(x, L, y);
}

static void quantize_block_q2_K(const float *x, block_q2_K *y) {
    uint8_t L[QK_K];
    uint8_t Laux[16];
    float weights[16];
    float mins[QK_K / 16];
    float scales[QK_K / 16];

    /* 1. per sub-block affine fit, weights |x| and absolute error */
    for (int j = 0; j < QK_K / 16; ++j) {
        for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16 * j + l]);
        scales[j] = fit_affine_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
    }
    q2_K_scales_finish(x, scales, mins, L, y);
}

void quantize_row_q2_K_ref(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q2_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q2_K(x + i * QK_K, y + i);
}

void dequantize_row_q2_K(const void *vx, float *y, int64_t k) {
    assert(k % QK_K == 0);
    const block_q2_K *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        const float min = tk_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                /* bytes 0..15 of this half with scale is, then bytes 16..31 with scale is+1 */
                for (int h = 0; h < 2; ++h) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l) *y++ = dl * ((q[16 * h + l] >> shift) & 3) - ml;
                }
            }
            q += 32;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
   Q3_K: 16 sub-blocks of 16, symmetric x ≈ d·sc_j·q, q in −4..3, sc_j 6 bits signed
   ------------------------------------------------------------------------------------------------------------ */

/* Q3_K step 2, shared with the AVX2 version: the signed scale of largest magnitude maps to -32; every sub-block
   scale is quantized to 6 bits against it (narrowed before the clamp, as ggml) and packed: low 4 bits in
   scales[0..7] (low then high nibbles), top 2 bits in scales[8..11]; d = its inverse. */
void q3_K_pack_scales(const float scales[QK_K / 16], block_q3_K *y) {
    float max_scale = 0, amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        float scale = fabsf(scales[j]);
        if (scale > amax) { amax = scale; max_scale = scales[j]; }
    }
    memset(y->scales, 0, sizeof y->scales);
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) {
            int8_t l = (int8_t)tk_nearest_int(iscale * scales[j]);
            l = (int8_t)(clampi(l, -32, 31) + 32);
            if (j < 8) y->scales[j] = l & 0xF;
            else y->scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
            l >>= 4;
            y->scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
        }
        y->d = tk_fp32_to_fp16(1 / iscale);
    } else {
        y->d = tk_fp32_to_fp16(0.f);
    }
}

/* Steps 3-4 (also of the imatrix quantizer), with y->d and y->scales set: re-derive the quants from the decoded
   scales (stored +4: 0..7; sub-blocks whose scale decodes to 0 keep L), then put the high bit of element e into
   hmask[e % 32] bit e / 32 and pack the low two bits like Q2_K. */
void q3_K_finish(const float *x, int8_t L[QK_K], block_q3_K *y) {
    const float d_all = tk_fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = d_all * unpack_q3_scale(j, y->scales);
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) {
            L[16 * j + ii] = (int8_t)(clampi(tk_nearest_int(x[16 * j + ii] / d), -4, 3) + 4);
        }
    }
    memset(y->hmask, 0, sizeof y->hmask);
    uint8_t low[QK_K];
    for (int e = 0; e < QK_K; ++e) {
        int l = L[e];
        if (l > 3) {
            y->hmask[e % 32] |= (uint8_t)(1u << (e / 32));
            l -= 4;
        }
        low[e] = (uint8_t)l;
    }
    pack_2bit(low, y->qs);
}

static void quantize_block_q3_K(const float *x, block_q3_K *y) {
    int8_t L[QK_K];
    float scales[QK_K / 16];

    /* 1. per sub-block symmetric fit */
    for (int j = 0; j < QK_K / 16; ++j) scales[j] = fit_symmetric_q3(16, 4, x + 16 * j, L + 16 * j);

    /* 2. quantize the scales to 6 bits and pack them */
    q3_K_pack_scales(scales, y);

    q3_K_finish(x, L, y);
}

void quantize_row_q3_K_ref(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q3_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q3_K(x + i * QK_K, y + i);
}

void dequantize_row_q3_K(const void *vx, float *y, int64_t k) {
    assert(k % QK_K == 0);
    const block_q3_K *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d_all = tk_fp16_to_fp32(x[i].d);
        const uint8_t *q = x[i].qs;
        const uint8_t *hm = x[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int h = 0; h < 2; ++h) {
                    const float dl = d_all * unpack_q3_scale(is++, x[i].scales);
                    for (int l = 0; l < 16; ++l) {
                        /* a clear hmask bit means the quant is the low two bits minus 4 */
                        int v = ((q[16 * h + l] >> shift) & 3) - ((hm[16 * h + l] & m) ? 0 : 4);
                        *y++ = dl * v;
                    }
                }
                m <<= 1;
            }
            q += 32;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
   Q4_K / Q5_K: 8 sub-blocks of 32, x ≈ d·sc_j·q − dmin·m_j, sc_j and m_j 6 bits each
   ------------------------------------------------------------------------------------------------------------ */

/* Q4_K/Q5_K step 3 (also of the imatrix quantizers): re-derive the quants (0..nmax) from the decoded scales and
   mins; sub-blocks whose scale decodes to 0 keep L. */
void k4_requantize(const float *x, int nmax, const uint8_t scales[K_SCALE_SIZE], tk_half d16, tk_half dmin16,
                   uint8_t L[QK_K]) {
    const float d_all = tk_fp16_to_fp32(d16), dmin_all = tk_fp16_to_fp32(dmin16);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        unpack_scale_min_k4(j, scales, &sc, &m);
        const float d = d_all * sc;
        if (!d) continue;
        const float dm = dmin_all * m;
        for (int ii = 0; ii < 32; ++ii) {
            L[32 * j + ii] = (uint8_t)clampi(tk_nearest_int((x[32 * j + ii] + dm) / d), 0, nmax);
        }
    }
}

/* Steps 2-3 shared by Q4_K and Q5_K (and their NEON versions, quants_k_neon.c): from the sub-blocks' fitted scales
   and mins, quantize and pack the 6-bit scales/mins against their maxima, store d/dmin, and re-derive the final quants
   (0..nmax) in L (sub-blocks whose scale decodes to 0 keep the fit's). */
void k4_finish(const float *x, int nmax, const float scales[QK_K / 32], const float mins[QK_K / 32],
               uint8_t scales_out[K_SCALE_SIZE], tk_half *d_out, tk_half *dmin_out, uint8_t L[QK_K]) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }

    /* 2. 6-bit scales and mins against their maxima (narrowed to uint8 before the clamp, as ggml) */
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(scales_out, 0, K_SCALE_SIZE);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)tk_nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)tk_nearest_int(inv_min * mins[j]);
        ls = (uint8_t)imin(63, ls);
        lm = (uint8_t)imin(63, lm);
        pack_scale_min_k4(j, ls, lm, scales_out);
    }
    *d_out = tk_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = tk_fp32_to_fp16(max_min / 63.f);

    k4_requantize(x, nmax, scales_out, *d_out, *dmin_out, L);
}

/* Steps shared by Q4_K and Q5_K: fit each sub-block, then k4_finish. */
static void quantize_scales_mins_k4(const float *x, int nmax, float rmin, int nstep, uint8_t scales_out[K_SCALE_SIZE],
                                    tk_half *d_out, tk_half *dmin_out, uint8_t L[QK_K]) {
    uint8_t Laux[32];
    float weights[32];
    float mins[QK_K / 32];
    float scales[QK_K / 32];

    /* 1. per sub-block affine fit, weights rms(x) + |x|, squared error */
    for (int j = 0; j < QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_affine_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, 0);
    }
    k4_finish(x, nmax, scales, mins, scales_out, d_out, dmin_out, L);
}

/* per 64-element chunk: low nibble element l (sub-block 2c), high nibble element 32 + l (sub-block 2c+1) */
void q4_K_pack_quants(const uint8_t L[QK_K], block_q4_K *y) {
    uint8_t *q = y->qs;
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        q += 32;
    }
}

static void quantize_block_q4_K(const float *x, block_q4_K *y) {
    uint8_t L[QK_K];
    quantize_scales_mins_k4(x, 15, -1.f, 20, y->scales, &y->d, &y->dmin, L);
    q4_K_pack_quants(L, y);
}

void quantize_row_q4_K_ref(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q4_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q4_K(x + i * QK_K, y + i);
}

void dequantize_row_q4_K(const void *vx, float *y, int64_t k) {
    assert(k % QK_K == 0);
    const block_q4_K *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const uint8_t *q = x[i].qs;
        const float d = tk_fp16_to_fp32(x[i].d);
        const float min = tk_fp16_to_fp32(x[i].dmin);
        for (int is = 0; is < QK_K / 32; is += 2) {
            uint8_t sc, m;
            unpack_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            unpack_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
        }
    }
}

static void quantize_block_q5_K(const float *x, block_q5_K *y) {
    uint8_t L[QK_K];
    quantize_scales_mins_k4(x, 31, -0.5f, 15, y->scales, &y->d, &y->dmin, L);
    q5_K_pack_quants(L, y);
}

/* low nibbles as Q4_K; bit 4 of element c·64 + l into qh[l] bit 2c, of c·64 + 32 + l into bit 2c+1 */
void q5_K_pack_quants(const uint8_t L[QK_K], block_q5_K *y) {
    uint8_t *ql = y->qs, *qh = y->qh;
    memset(qh, 0, sizeof y->qh);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 <<= 2;
        m2 <<= 2;
        ql += 32;
    }
}

void quantize_row_q5_K_ref(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q5_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q5_K(x + i * QK_K, y + i);
}

void dequantize_row_q5_K(const void *vx, float *y, int64_t k) {
    assert(k % QK_K == 0);
    const block_q5_K *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const float d = tk_fp16_to_fp32(x[i].d);
        const float min = tk_fp16_to_fp32(x[i].dmin);
        uint8_t u1 = 1, u2 = 2;
        for (int is = 0; is < QK_K / 32; is += 2) {
            uint8_t sc, m;
            unpack_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            unpack_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
   Q6_K: 16 sub-blocks of 16, symmetric x ≈ d·sc_j·q, q in −32..31, sc_j int8
   ------------------------------------------------------------------------------------------------------------ */

/* Steps 2-4 (also of the imatrix quantizer) from the sub-block scales and their signed maximum: int8 scales,
   the quants re-derived from the decoded scales (sub-blocks whose scale decodes to 0 keep L), packed. */
void q6_K_finish(const float *x, const float scales[QK_K / 16], float max_scale, float max_abs_scale,
                 int8_t L[QK_K], block_q6_K *y) {
    if (max_abs_scale < GROUP_MAX_EPS) {  /* whole block (nearly) zero */
        memset(y, 0, sizeof *y);
        y->d = tk_fp32_to_fp16(0.f);
        return;
    }

    /* 2. int8 scales, the largest maps to −128 */
    float iscale = -128.f / max_scale;
    y->d = tk_fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) y->scales[ib] = (int8_t)imin(127, tk_nearest_int(iscale * scales[ib]));

    /* 3. re-derive the quants from the decoded scales (stored +32: 0..63) */
    const float d_all = tk_fp16_to_fp32(y->d);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = d_all * y->scales[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) {
            L[16 * j + ii] = (int8_t)(clampi(tk_nearest_int(x[16 * j + ii] / d), -32, 31) + 32);
        }
    }

    /* 4. pack: per 128-element half, low nibbles of l and l+64 share ql[l], of l+32 and l+96 share ql[l+32];
          the top two bits of l, l+32, l+64, l+96 share qh[l] */
    uint8_t *ql = y->ql, *qh = y->qh;
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                              ((L[j + l + 96] >> 4) << 6));
        }
        ql += 64;
        qh += 32;
    }
}

static void quantize_block_q6_K(const float *x, block_q6_K *y) {
    int8_t L[QK_K];
    float scales[QK_K / 16];

    /* 1. per sub-block symmetric fit; keep the signed scale of largest magnitude */
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float scale = fit_symmetric_rmse(32, x + 16 * ib, L + 16 * ib);
        scales[ib] = scale;
        const float abs_scale = fabsf(scale);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
    }
    q6_K_finish(x, scales, max_scale, max_abs_scale, L, y);
}

void quantize_row_q6_K_ref(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q6_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q6_K(x + i * QK_K, y + i);
}

void dequantize_row_q6_K(const void *vx, float *y, int64_t k) {
    assert(k % QK_K == 0);
    const block_q6_K *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n = 0; n < QK_K; n += 128) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                /* (d·sc)·q, in that order */
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
   Q8_K: d fp32 (signed max / −127), 256 int8 quants, bsums = sums of 16-quant groups
   ------------------------------------------------------------------------------------------------------------ */

static void quantize_block_q8_K(const float *x, block_q8_K *y) {
    float amax;
    float max = signed_absmax(x, QK_K, &amax);
    if (!amax) {
        /* ggml leaves bsums untouched here; we zero them, which is what they sum to */
        memset(y, 0, sizeof *y);
        return;
    }
    const float iscale = -127.f / max;   /* 127, not 128 (ggml: keeps IQ2_XXS's AVX dot products simple) */
    for (int j = 0; j < QK_K; ++j) y->qs[j] = (int8_t)imin(127, tk_nearest_int(iscale * x[j]));
    for (int j = 0; j < QK_K / 16; ++j) {
        int sum = 0;
        for (int ii = 0; ii < 16; ++ii) sum += y->qs[j * 16 + ii];
        y->bsums[j] = (int16_t)sum;
    }
    y->d = 1 / iscale;
}

void quantize_row_q8_K_ref(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q8_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q8_K(x + i * QK_K, y + i);
}

void dequantize_row_q8_K(const void *vx, float *y, int64_t k) {
    assert(k % QK_K == 0);
    const block_q8_K *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        for (int j = 0; j < QK_K; ++j) *y++ = x[i].d * x[i].qs[j];
    }
}
