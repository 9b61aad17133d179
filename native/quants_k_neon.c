/* ARM64 NEON versions of k-quant quantizers, byte for byte the reference's (quants_k.c):

   * Q8_K (the activations of every k-quant product): the same first element of largest magnitude, the same iscale,
     tk_nearest_int's mantissa trick lane by lane, exact 16-quant sums;
   * Q2_K..Q6_K: as quants_k_avx2.c does it, the vectors run ACROSS sub-blocks (lane j of a vector = sub-block
     4g + j, the super-block transposed once), so that every lane performs exactly the reference's float operations
     of fit_affine_quants / fit_symmetric_q3 / fit_symmetric_rmse in its order (same grouping, sums left to right
     from the same start, divisions kept, no FMA: the core is built with -ffp-contract=off), branches as masks with
     the same predicates; the steps after the fits are the reference's own (q2_K_scales_finish, q3_K_pack_scales and
     q3_K_finish, k4_finish, q6_K_finish, the packings). */
#include <math.h>
#include <string.h>
#include "quants.h"

#if defined(__aarch64__)
#include <arm_neon.h>

/* min(127, tk_nearest_int(v)) on 4 lanes */
static inline int32x4_t nearest_max127(float32x4_t v) {
    const int32x4_t i = vreinterpretq_s32_f32(vaddq_f32(v, vdupq_n_f32(12582912.f)));
    const int32x4_t n = vsubq_s32(vandq_s32(i, vdupq_n_s32(0x007fffff)), vdupq_n_s32(0x00400000));
    return vminq_s32(n, vdupq_n_s32(127));
}

static void quantize_block_q8_K_neon(const float *x, block_q8_K *y) {
    float32x4_t m = vabsq_f32(vld1q_f32(x));
    for (int i = 4; i < QK_K; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    const float amax = vmaxvq_f32(m);
    if (!(amax > 0)) {  /* the reference: no element with |x| > 0 */
        memset(y, 0, sizeof *y);
        return;
    }
    int j = 0;
    while (fabsf(x[j]) != amax) j++;  /* the first one, as the reference's strict > scan keeps */
    const float iscale = -127.f / x[j];
    for (int g = 0; g < QK_K / 16; g++) {
        int32x4_t q[4];
        for (int k = 0; k < 4; k++) q[k] = nearest_max127(vmulq_n_f32(vld1q_f32(x + 16 * g + 4 * k), iscale));
        const int16x8_t a = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1])), b = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
        const int8x16_t qs = vcombine_s8(vmovn_s16(a), vmovn_s16(b));
        vst1q_s8(y->qs + 16 * g, qs);
        y->bsums[g] = (int16_t)vaddlvq_s8(qs);
    }
    y->d = 1 / iscale;
}

void quantize_row_q8_K_neon(const float *x, void *vy, int64_t k) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q8_K_neon(x + i * QK_K, y + i);
}

/* ---------------------------------------------------------------------------------------------- Q6_K */

#define SUB 16                /* elements per sub-block */

/* clamp(tk_nearest_int(v), lo, hi) as a float, for lanes with |v| < 2^22 (there (v + 1.5·2^23) − 1.5·2^23 is that
   integer); other lanes are never used */
static inline float32x4_t round_clamp_small(float32x4_t v, float lo, float hi) {
    const float32x4_t magic = vdupq_n_f32(12582912.f);
    const float32x4_t r = vsubq_f32(vaddq_f32(v, magic), magic);
    return vminq_f32(vmaxq_f32(r, vdupq_n_f32(lo)), vdupq_n_f32(hi));
}

static inline float32x4_t blend(float32x4_t a, float32x4_t b, uint32x4_t take_b) { return vbslq_f32(take_b, b, a); }

/* xt[i] lane j = element i of sub-block 4g + j, for sub-blocks of n elements (n a multiple of 4) */
static inline void transpose_group(const float *x, int n, int g, float32x4_t *xt) {
    for (int i0 = 0; i0 < n; i0 += 4) {
        const float *p = x + n * 4 * g + i0;
        const float32x4_t r0 = vld1q_f32(p), r1 = vld1q_f32(p + n), r2 = vld1q_f32(p + 2 * n), r3 = vld1q_f32(p + 3 * n);
        const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1)), t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
        const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3)), t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
        xt[i0] = vreinterpretq_f32_f64(vtrn1q_f64(t0, t2));
        xt[i0 + 1] = vreinterpretq_f32_f64(vtrn1q_f64(t1, t3));
        xt[i0 + 2] = vreinterpretq_f32_f64(vtrn2q_f64(t0, t2));
        xt[i0 + 3] = vreinterpretq_f32_f64(vtrn2q_f64(t1, t3));
    }
}

/* lane j of the quants Lt[i] (floats holding small integers) into dst[n·(4g + j) + i] as bytes */
static inline void untranspose_bytes(const float32x4_t *Lt, int n, int g, uint8_t *dst) {
    for (int i = 0; i < n; ++i) {
        int32_t q[4];
        vst1q_s32(q, vcvtq_s32_f32(Lt[i]));
        for (int j = 0; j < 4; ++j) dst[n * (4 * g + j) + i] = (uint8_t)q[j];
    }
}

/* fit_symmetric_rmse of quants_k.c on the 4 sub-blocks of xt (lane j = sub-block j): L[i] = quant + nmax as a float
   (0 in all-small lanes); returns the scales */
static float32x4_t fit_rmse4(const int nmax, const float32x4_t x[SUB], float32x4_t L[SUB]) {
    const float32x4_t zero = vdupq_n_f32(0.0f);
    /* signed element of largest magnitude, the first on ties (strict >, from 0) */
    float32x4_t am = zero, max = zero;
    for (int i = 0; i < SUB; ++i) {
        const float32x4_t ax = vabsq_f32(x[i]);
        const uint32x4_t gt = vcgtq_f32(ax, am);
        am = blend(am, ax, gt);
        max = blend(max, x[i], gt);
    }
    const uint32x4_t small = vcltq_f32(am, vdupq_n_f32(GROUP_MAX_EPS));
    float32x4_t w[SUB], wx[SUB];
    for (int i = 0; i < SUB; ++i) {
        w[i] = vmulq_f32(x[i], x[i]);
        wx[i] = vmulq_f32(w[i], x[i]);
    }
    const float lo = (float)-nmax, hi = (float)(nmax - 1);
    float32x4_t iscale = vdivq_f32(vdupq_n_f32((float)-nmax), max);
    float32x4_t sumlx = zero, suml2 = zero;
    for (int i = 0; i < SUB; ++i) {
        L[i] = round_clamp_small(vmulq_f32(iscale, x[i]), lo, hi);
        sumlx = vaddq_f32(sumlx, vmulq_f32(wx[i], L[i]));
        suml2 = vaddq_f32(suml2, vmulq_f32(vmulq_f32(w[i], L[i]), L[i]));
    }
    /* scale = suml2 ? sumlx / suml2 : 0 (NaN counts as true) */
    float32x4_t scale = blend(zero, vdivq_f32(sumlx, suml2), vmvnq_u32(vceqq_f32(suml2, zero)));
    float32x4_t best = vmulq_f32(scale, sumlx);
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = vdivq_f32(vdupq_n_f32(-((float)nmax + 0.1f * (float)is)), max);
        float32x4_t l[SUB], slx = zero, sl2 = zero;
        for (int i = 0; i < SUB; ++i) {
            l[i] = round_clamp_small(vmulq_f32(iscale, x[i]), lo, hi);
            slx = vaddq_f32(slx, vmulq_f32(wx[i], l[i]));
            sl2 = vaddq_f32(sl2, vmulq_f32(vmulq_f32(w[i], l[i]), l[i]));
        }
        const uint32x4_t upd = vandq_u32(vcgtq_f32(sl2, zero), vcgtq_f32(vmulq_f32(slx, slx), vmulq_f32(best, sl2)));
        if (vmaxvq_u32(upd)) {
            for (int i = 0; i < SUB; ++i) L[i] = blend(L[i], l[i], upd);
            scale = blend(scale, vdivq_f32(slx, sl2), upd);
            best = blend(best, vmulq_f32(scale, slx), upd);
        }
    }
    const float32x4_t off = vdupq_n_f32((float)nmax);
    for (int i = 0; i < SUB; ++i) L[i] = blend(vaddq_f32(L[i], off), zero, small);
    return blend(scale, zero, small);
}

static void quantize_block_q6_K_neon(const float *x, block_q6_K *y) {
    int8_t L[QK_K];
    float scales[QK_K / SUB];
    for (int g = 0; g < QK_K / SUB / 4; ++g) {
        float32x4_t xt[SUB], Lt[SUB];
        transpose_group(x, SUB, g, xt);
        vst1q_f32(scales + 4 * g, fit_rmse4(32, xt, Lt));
        untranspose_bytes(Lt, SUB, g, (uint8_t *)L);
    }
    /* the signed scale of largest magnitude, the first on ties, as the reference scans them */
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / SUB; ++ib) {
        const float abs_scale = fabsf(scales[ib]);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scales[ib]; }
    }
    q6_K_finish(x, scales, max_scale, max_abs_scale, L, y);
}

void quantize_row_q6_K_neon(const float *x, void *vy, int64_t k) {
    block_q6_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q6_K_neon(x + i * QK_K, y + i);
}

/* ---------------------------------------------------------------------------------------------- Q4_K, Q5_K */

#define AFF 32  /* elements per sub-block */

/* clamp(tk_nearest_int(v), lo, hi) on 4 lanes, for every input (the reference's mantissa trick in integers) */
static inline float32x4_t round_clamp(float32x4_t v, int lo, int hi) {
    const int32x4_t i = vreinterpretq_s32_f32(vaddq_f32(v, vdupq_n_f32(12582912.f)));
    const int32x4_t n = vsubq_s32(vandq_s32(i, vdupq_n_s32(0x007fffff)), vdupq_n_s32(0x00400000));
    return vcvtq_f32_s32(vmaxq_s32(vdupq_n_s32(lo), vminq_s32(vdupq_n_s32(hi), n)));
}

/* fit_affine_quants of quants_k.c on the 4 sub-blocks of n elements in x (lane j = sub-block j) with weights w:
   L[i] the quants as floats, returns the scales and the negated mins in *negmin */
static float32x4_t fit_affine4(const int n, const int nmax, const float32x4_t *x, const float32x4_t *w, float32x4_t *L,
                               float32x4_t *negmin, const float rmin, const int nstep, const int use_mad) {
    const float32x4_t zero = vdupq_n_f32(0.0f);
    /* range and weighted sums (from element 0 on) */
    float32x4_t vmin = x[0], vmax = x[0], sum_w = w[0], sum_x = vmulq_f32(w[0], x[0]);
    for (int i = 1; i < n; ++i) {
        vmin = blend(vmin, x[i], vcltq_f32(x[i], vmin));
        vmax = blend(vmax, x[i], vcgtq_f32(x[i], vmax));
        sum_w = vaddq_f32(sum_w, w[i]);
        sum_x = vaddq_f32(sum_x, vmulq_f32(w[i], x[i]));
    }
    vmin = blend(vmin, zero, vcgtq_f32(vmin, zero));   /* if (min > 0) min = 0 */
    const uint32x4_t flat = vceqq_f32(vmax, vmin);      /* max == min: the reference returns at once */
    const float32x4_t min0 = vmin;
    float32x4_t range = vsubq_f32(vmax, vmin);
    /* first guess */
    const float32x4_t iscale0 = vdivq_f32(vdupq_n_f32((float)nmax), range);
    float32x4_t scale = vdivq_f32(vdupq_n_f32(1.0f), iscale0), best = zero;
    for (int i = 0; i < n; ++i) {
        L[i] = round_clamp(vmulq_f32(iscale0, vsubq_f32(x[i], vmin)), 0, nmax);
        const float32x4_t diff = vsubq_f32(vaddq_f32(vmulq_f32(scale, L[i]), vmin), x[i]);
        best = vaddq_f32(best, vmulq_f32(w[i], use_mad ? vabsq_f32(diff) : vmulq_f32(diff, diff)));
    }
    /* search: each grid from the min of the best fit so far */
    for (int is = 0; is <= nstep; ++is) {
        const float32x4_t isc = vdivq_f32(vdupq_n_f32(rmin + 0.1f * (float)is + (float)nmax), range);
        float32x4_t la[AFF], sl = zero, sl2 = zero, sxl = zero;
        for (int i = 0; i < n; ++i) {
            la[i] = round_clamp(vmulq_f32(isc, vsubq_f32(x[i], vmin)), 0, nmax);
            const float32x4_t wl = vmulq_f32(w[i], la[i]);
            sl = vaddq_f32(sl, wl);
            sl2 = vaddq_f32(sl2, vmulq_f32(wl, la[i]));
            sxl = vaddq_f32(sxl, vmulq_f32(wl, x[i]));
        }
        const float32x4_t D = vsubq_f32(vmulq_f32(sum_w, sl2), vmulq_f32(sl, sl));
        const uint32x4_t ok = vcgtq_f32(D, zero);
        const float32x4_t s = vdivq_f32(vsubq_f32(vmulq_f32(sum_w, sxl), vmulq_f32(sum_x, sl)), D);
        const float32x4_t m = vdivq_f32(vsubq_f32(vmulq_f32(sl2, sum_x), vmulq_f32(sl, sxl)), D);
        const uint32x4_t mpos = vcgtq_f32(m, zero);  /* a positive offset: refit through the origin */
        const float32x4_t tm = blend(m, zero, mpos), ts = blend(s, vdivq_f32(sxl, sl2), mpos);
        float32x4_t cur = zero;
        for (int i = 0; i < n; ++i) {
            const float32x4_t diff = vsubq_f32(vaddq_f32(vmulq_f32(ts, la[i]), tm), x[i]);
            cur = vaddq_f32(cur, vmulq_f32(w[i], use_mad ? vabsq_f32(diff) : vmulq_f32(diff, diff)));
        }
        const uint32x4_t upd = vandq_u32(ok, vcltq_f32(cur, best));
        if (vmaxvq_u32(upd)) {
            best = blend(best, cur, upd);
            scale = blend(scale, ts, upd);
            vmin = blend(vmin, tm, upd);
            range = vsubq_f32(vmax, vmin);
            for (int i = 0; i < n; ++i) L[i] = blend(L[i], la[i], upd);
        }
    }
    /* lanes that returned early: L = 0, scale 0, the min as it was */
    for (int i = 0; i < n; ++i) L[i] = blend(L[i], zero, flat);
    scale = blend(scale, zero, flat);
    vmin = blend(vmin, min0, flat);
    *negmin = vnegq_f32(vmin);
    return scale;
}

/* quantize_scales_mins_k4 of quants_k.c: the 8 fits, then the reference's k4_finish */
static void scales_mins_k4_neon(const float *x, int nmax, float rmin, int nstep, uint8_t scales_out[K_SCALE_SIZE],
                                tk_half *d_out, tk_half *dmin_out, uint8_t L[QK_K]) {
    float scales[QK_K / AFF], mins[QK_K / AFF];
    for (int g = 0; g < QK_K / AFF / 4; ++g) {
        float32x4_t xt[AFF], w[AFF], Lt[AFF], nm;
        transpose_group(x, AFF, g, xt);
        /* weights rms(x) + |x|: av_x = sqrt(Σx² / 32), the sum from 0 in element order */
        float32x4_t sum_x2 = vdupq_n_f32(0.0f);
        for (int i = 0; i < AFF; ++i) sum_x2 = vaddq_f32(sum_x2, vmulq_f32(xt[i], xt[i]));
        const float32x4_t av_x = vsqrtq_f32(vdivq_f32(sum_x2, vdupq_n_f32(32.0f)));
        for (int i = 0; i < AFF; ++i) w[i] = vaddq_f32(av_x, vabsq_f32(xt[i]));
        vst1q_f32(scales + 4 * g, fit_affine4(AFF, nmax, xt, w, Lt, &nm, rmin, nstep, 0));
        vst1q_f32(mins + 4 * g, nm);
        untranspose_bytes(Lt, AFF, g, L);
    }
    k4_finish(x, nmax, scales, mins, scales_out, d_out, dmin_out, L);
}

void quantize_row_q4_K_neon(const float *x, void *vy, int64_t k) {
    block_q4_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        uint8_t L[QK_K];
        scales_mins_k4_neon(x + i * QK_K, 15, -1.f, 20, y[i].scales, &y[i].d, &y[i].dmin, L);
        q4_K_pack_quants(L, y + i);
    }
}

void quantize_row_q5_K_neon(const float *x, void *vy, int64_t k) {
    block_q5_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        uint8_t L[QK_K];
        scales_mins_k4_neon(x + i * QK_K, 31, -0.5f, 15, y[i].scales, &y[i].d, &y[i].dmin, L);
        q5_K_pack_quants(L, y + i);
    }
}

/* ---------------------------------------------------------------------------------------------- Q2_K, Q3_K */

static void quantize_block_q2_K_neon(const float *x, block_q2_K *y) {
    uint8_t L[QK_K];
    float scales[QK_K / SUB], mins[QK_K / SUB];
    for (int g = 0; g < QK_K / SUB / 4; ++g) {
        float32x4_t xt[SUB], w[SUB], Lt[SUB], nm;
        transpose_group(x, SUB, g, xt);
        for (int i = 0; i < SUB; ++i) w[i] = vabsq_f32(xt[i]);  /* weights |x|, absolute error */
        vst1q_f32(scales + 4 * g, fit_affine4(SUB, 3, xt, w, Lt, &nm, -0.5f, 15, 1));
        vst1q_f32(mins + 4 * g, nm);
        untranspose_bytes(Lt, SUB, g, L);
    }
    q2_K_scales_finish(x, scales, mins, L, y);
}

void quantize_row_q2_K_neon(const float *x, void *vy, int64_t k) {
    block_q2_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q2_K_neon(x + i * QK_K, y + i);
}

/* fit_symmetric_q3 of quants_k.c on the 4 sub-blocks of xt (lane j = sub-block j): L[i] = quant + nmax as a float
   (0 in all-small lanes); returns the scales. A lane whose pass changes nothing is at a fixed point (further passes
   leave it as it is), so passes until no lane changes (at most 5) equal the reference's per-sub-block early exit. */
static float32x4_t fit_q3_4(const int nmax, const float32x4_t x[SUB], float32x4_t L[SUB]) {
    const float32x4_t zero = vdupq_n_f32(0.0f);
    float32x4_t am = zero, max = zero;
    for (int i = 0; i < SUB; ++i) {
        const float32x4_t ax = vabsq_f32(x[i]);
        const uint32x4_t gt = vcgtq_f32(ax, am);
        am = blend(am, ax, gt);
        max = blend(max, x[i], gt);
    }
    const uint32x4_t small = vcltq_f32(am, vdupq_n_f32(GROUP_MAX_EPS));
    const float32x4_t iscale = vdivq_f32(vdupq_n_f32((float)-nmax), max);
    float32x4_t w[SUB], wx[SUB], sumlx = zero, suml2 = zero;
    for (int i = 0; i < SUB; ++i) {
        L[i] = round_clamp(vmulq_f32(iscale, x[i]), -nmax, nmax - 1);
        w[i] = vmulq_f32(x[i], x[i]);
        wx[i] = vmulq_f32(w[i], x[i]);
        sumlx = vaddq_f32(sumlx, vmulq_f32(wx[i], L[i]));
        suml2 = vaddq_f32(suml2, vmulq_f32(vmulq_f32(w[i], L[i]), L[i]));
    }
    for (int itry = 0; itry < 5; ++itry) {
        uint32x4_t changed = vdupq_n_u32(0);
        for (int i = 0; i < SUB; ++i) {
            float32x4_t slx = vsubq_f32(sumlx, vmulq_f32(wx[i], L[i]));
            const uint32x4_t m1 = vcgtq_f32(slx, zero);
            if (!vmaxvq_u32(m1)) continue;
            float32x4_t sl2 = vsubq_f32(suml2, vmulq_f32(vmulq_f32(w[i], L[i]), L[i]));
            const float32x4_t nl = round_clamp(vdivq_f32(vmulq_f32(x[i], sl2), slx), -nmax, nmax - 1);
            const uint32x4_t m2 = vandq_u32(m1, vmvnq_u32(vceqq_f32(nl, L[i])));
            if (!vmaxvq_u32(m2)) continue;
            slx = vaddq_f32(slx, vmulq_f32(wx[i], nl));
            sl2 = vaddq_f32(sl2, vmulq_f32(vmulq_f32(w[i], nl), nl));
            const uint32x4_t better = vcgtq_f32(vmulq_f32(vmulq_f32(slx, slx), suml2),
                                                vmulq_f32(vmulq_f32(sumlx, sumlx), sl2));
            const uint32x4_t m3 = vandq_u32(vandq_u32(m2, vcgtq_f32(sl2, zero)), better);
            L[i] = blend(L[i], nl, m3);
            sumlx = blend(sumlx, slx, m3);
            suml2 = blend(suml2, sl2, m3);
            changed = vorrq_u32(changed, m3);
        }
        if (!vmaxvq_u32(changed)) break;
    }
    const float32x4_t off = vdupq_n_f32((float)nmax);
    for (int i = 0; i < SUB; ++i) L[i] = blend(vaddq_f32(L[i], off), zero, small);
    const float32x4_t scale = blend(zero, vdivq_f32(sumlx, suml2), vcgtq_f32(suml2, zero));
    return blend(scale, zero, small);
}

static void quantize_block_q3_K_neon(const float *x, block_q3_K *y) {
    int8_t L[QK_K];
    float scales[QK_K / SUB];
    for (int g = 0; g < QK_K / SUB / 4; ++g) {
        float32x4_t xt[SUB], Lt[SUB];
        transpose_group(x, SUB, g, xt);
        vst1q_f32(scales + 4 * g, fit_q3_4(4, xt, Lt));
        untranspose_bytes(Lt, SUB, g, (uint8_t *)L);
    }
    q3_K_pack_scales(scales, y);
    q3_K_finish(x, L, y);
}

void quantize_row_q3_K_neon(const float *x, void *vy, int64_t k) {
    block_q3_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q3_K_neon(x + i * QK_K, y + i);
}

#endif
