/* AVX2 versions of the k-quant quantizers (Q2_K..Q6_K). They produce exactly the bytes of the reference
   (quants_k.c, itself bit-exact with ggml's no-imatrix path).

   How bit-exactness is kept: the vectors run ACROSS sub-blocks, never within a sum. Each super-block is transposed
   once into an [element][sub-block] layout, so that lane j of every vector belongs to sub-block j and walks that
   sub-block's elements in the scalar order: every lane performs exactly the reference's float operations (same
   operands, same grouping (w·l)·l and (w·l)·x, same left-to-right accumulation starting from the same value,
   divisions kept as divisions, no FMA: the target has no "fma" and the build passes -ffp-contract=off). Branches
   become masks: a lane takes the new values only where the scalar condition (same predicate, same NaN behaviour:
   `a > b` is _CMP_GT_OQ, `!d` is d == 0, `s ? :` is s != 0 unordered) holds. Rounding uses the reference's
   mantissa trick (add 1.5·2^23, keep the low 23 bits), so even out-of-range values round the same.
   Several trial grids of the search are evaluated together (independent sums) purely for instruction-level
   parallelism; the "keep the strictly better one" decisions are then taken in the scalar order.
   Per-element work of the final pass is vectorized within the block (same arithmetic per element), the short
   reductions over sub-block scales stay scalar, copied from the reference. */
#include <math.h>
#include <string.h>

#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,f16c")))
#define GMAX 3 /* largest number of Q6_K trial grids evaluated together */


/* ------------------------------------------------------------------------------------------------------------
   Vector helpers
   ------------------------------------------------------------------------------------------------------------ */

/* tk_nearest_int on 8 lanes: identical for every input, including |v| > 4194303 and non-finite ones */
AVX2_INLINE __m256i v_nearest(__m256 v) {
    __m256i i = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.f)));
    return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

AVX2_INLINE __m256i v_round_clampi(__m256 v, int lo, int hi) {
    __m256i i = v_nearest(v);
    return _mm256_max_epi32(_mm256_set1_epi32(lo), _mm256_min_epi32(_mm256_set1_epi32(hi), i));
}

/* the clamped rounding as a float (exact: small integers) */
AVX2_INLINE __m256 v_round_clamp(__m256 v, int lo, int hi) { return _mm256_cvtepi32_ps(v_round_clampi(v, lo, hi)); }

/* the same rounding and clamp for inputs known to satisfy |v| < 2^22 (where (v + 1.5·2^23) − 1.5·2^23 is exactly the
   integer tk_nearest_int returns), done in the float domain; lanes outside that range must not be used */
AVX2_INLINE __m256 v_round_clamp_small(__m256 v, float lo, float hi) {
    const __m256 magic = _mm256_set1_ps(12582912.f);
    const __m256 r = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
    return _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
}

AVX2_INLINE __m256 v_abs(__m256 v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }

AVX2_INLINE __m256 v_blend(__m256 a, __m256 b, __m256 mask) { return _mm256_blendv_ps(a, b, mask); }

/* 8 rows of 8 floats (row r at src + r·stride) → out[c] = column c, lane r = row r */
AVX2_INLINE void transpose8(const float *src, int stride, __m256 *out) {
    __m256 r0 = _mm256_loadu_ps(src + 0 * stride), r1 = _mm256_loadu_ps(src + 1 * stride);
    __m256 r2 = _mm256_loadu_ps(src + 2 * stride), r3 = _mm256_loadu_ps(src + 3 * stride);
    __m256 r4 = _mm256_loadu_ps(src + 4 * stride), r5 = _mm256_loadu_ps(src + 5 * stride);
    __m256 r6 = _mm256_loadu_ps(src + 6 * stride), r7 = _mm256_loadu_ps(src + 7 * stride);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    out[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    out[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    out[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    out[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    out[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    out[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    out[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    out[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* four vectors of 8 int32 in 0..255 → 32 bytes, in order */
AVX2_INLINE void store_bytes32(__m256i a, __m256i b, __m256i c, __m256i d, uint8_t *dst) {
    __m256i ab = _mm256_packs_epi32(a, b);     /* a0-3 b0-3 | a4-7 b4-7 */
    __m256i cd = _mm256_packs_epi32(c, d);
    __m256i abcd = _mm256_packus_epi16(ab, cd); /* a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7 */
    abcd = _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, abcd);
}

AVX2_INLINE __m256i load32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* Q2_K/Q3_K low bits (values 0..3): qs[32h + l] = L[128h + l] | L[+32] << 2 | L[+64] << 4 | L[+96] << 6 */
AVX2_INLINE void pack_2bit_v(const uint8_t *L, uint8_t *qs) {
    for (int h = 0; h < 2; ++h) {
        const uint8_t *p = L + 128 * h;
        /* values < 4: 16-bit shifts never carry a bit across a byte */
        __m256i v = _mm256_or_si256(load32(p), _mm256_slli_epi16(load32(p + 32), 2));
        v = _mm256_or_si256(v, _mm256_slli_epi16(load32(p + 64), 4));
        v = _mm256_or_si256(v, _mm256_slli_epi16(load32(p + 96), 6));
        _mm256_storeu_si256((__m256i *)(qs + 32 * h), v);
    }
}

/* ------------------------------------------------------------------------------------------------------------
   make_qkx2_quants on 8 sub-blocks at once (fit_affine_quants of quants_k.c, lane j = sub-block j), for NV
   independent sets of 8 sub-blocks run in lockstep (for instruction-level parallelism only).
   x[v][i], w[v][i]: element i of every sub-block of set v. Out: L[v][i] (quants as floats), scale[v], -min[v].
   Note: as in ggml, every trial grid uses the min (and max - min) of the best fit so far, so the trials are
   sequentially dependent and are evaluated one after the other.
   ------------------------------------------------------------------------------------------------------------ */
#define NVMAX 2
AVX2_INLINE void fit_affine8(const int NV, const int n, const int nmax, const __m256 (*x)[32], const __m256 (*w)[32],
                             __m256 (*L)[32], __m256 *scale_out, __m256 *negmin_out, const float rmin,
                             const float rdelta, const int nstep, const int use_mad) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 vmin[NVMAX], vmax[NVMAX], sum_w[NVMAX], sum_x[NVMAX], flat[NVMAX], min0[NVMAX], range[NVMAX];
    __m256 scale[NVMAX], best[NVMAX];
    __m256 xm[NVMAX][32];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
        vmin[v] = x[v][0];
        vmax[v] = x[v][0];
        sum_w[v] = w[v][0];
        sum_x[v] = _mm256_mul_ps(sum_w[v], x[v][0]);
        for (int i = 1; i < n; ++i) {
            vmin[v] = _mm256_min_ps(x[v][i], vmin[v]);   /* x < min ? x : min */
            vmax[v] = _mm256_max_ps(x[v][i], vmax[v]);   /* x > max ? x : max */
            sum_w[v] = _mm256_add_ps(sum_w[v], w[v][i]);
            sum_x[v] = _mm256_add_ps(sum_x[v], _mm256_mul_ps(w[v][i], x[v][i]));
        }
        vmin[v] = _mm256_andnot_ps(_mm256_cmp_ps(vmin[v], zero, _CMP_GT_OQ), vmin[v]); /* if (min > 0) min = 0 */
        flat[v] = _mm256_cmp_ps(vmax[v], vmin[v], _CMP_EQ_OQ);                         /* max == min: early return */
        min0[v] = vmin[v];
        range[v] = _mm256_sub_ps(vmax[v], vmin[v]);

        /* first guess */
        const __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), range[v]);
        scale[v] = _mm256_div_ps(_mm256_set1_ps(1.f), iscale);
        best[v] = zero;
        for (int i = 0; i < n; ++i) {
            xm[v][i] = _mm256_sub_ps(x[v][i], vmin[v]);
            L[v][i] = v_round_clamp(_mm256_mul_ps(iscale, xm[v][i]), 0, nmax);
            __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[v], L[v][i]), vmin[v]), x[v][i]);
            diff = use_mad ? v_abs(diff) : _mm256_mul_ps(diff, diff);
            best[v] = _mm256_add_ps(best[v], _mm256_mul_ps(w[v][i], diff));
        }
    }

    /* search */
    for (int is = 0; is <= nstep; ++is) {
        const __m256 num = _mm256_set1_ps(rmin + rdelta * (float)is + (float)nmax);
        __m256 isc[NVMAX], sl[NVMAX], sl2[NVMAX], sxl[NVMAX], Laux[NVMAX][32];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
            isc[v] = _mm256_div_ps(num, range[v]);
            sl[v] = sl2[v] = sxl[v] = zero;
        }
        for (int i = 0; i < n; ++i) {
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) {
                const __m256 l = v_round_clamp(_mm256_mul_ps(isc[v], xm[v][i]), 0, nmax);
                Laux[v][i] = l;
                const __m256 wl = _mm256_mul_ps(w[v][i], l);
                sl[v] = _mm256_add_ps(sl[v], wl);
                sl2[v] = _mm256_add_ps(sl2[v], _mm256_mul_ps(wl, l));
                sxl[v] = _mm256_add_ps(sxl[v], _mm256_mul_ps(wl, x[v][i]));
            }
        }
        __m256 ok[NVMAX], ts[NVMAX], tm[NVMAX], cur[NVMAX];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
            const __m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w[v], sl2[v]), _mm256_mul_ps(sl[v], sl[v]));
            ok[v] = _mm256_cmp_ps(D, zero, _CMP_GT_OQ);
            const __m256 s =
                _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w[v], sxl[v]), _mm256_mul_ps(sum_x[v], sl[v])), D);
            const __m256 m =
                _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sl2[v], sum_x[v]), _mm256_mul_ps(sl[v], sxl[v])), D);
            const __m256 mpos = _mm256_cmp_ps(m, zero, _CMP_GT_OQ);
            tm[v] = _mm256_andnot_ps(mpos, m);
            ts[v] = v_blend(s, _mm256_div_ps(sxl[v], sl2[v]), mpos);
            cur[v] = zero;
        }
        for (int i = 0; i < n; ++i) {
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) {
                __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(ts[v], Laux[v][i]), tm[v]), x[v][i]);
                diff = use_mad ? v_abs(diff) : _mm256_mul_ps(diff, diff);
                cur[v] = _mm256_add_ps(cur[v], _mm256_mul_ps(w[v][i], diff));
            }
        }
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
            const __m256 upd = _mm256_and_ps(ok[v], _mm256_cmp_ps(cur[v], best[v], _CMP_LT_OQ));
            if (_mm256_movemask_ps(upd)) {
                best[v] = v_blend(best[v], cur[v], upd);
                scale[v] = v_blend(scale[v], ts[v], upd);
                vmin[v] = v_blend(vmin[v], tm[v], upd);
                range[v] = _mm256_sub_ps(vmax[v], vmin[v]);
                for (int i = 0; i < n; ++i) {
                    L[v][i] = v_blend(L[v][i], Laux[v][i], upd);
                    xm[v][i] = _mm256_sub_ps(x[v][i], vmin[v]);
                }
            }
        }
    }

#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
        /* lanes that returned early: L = 0, scale 0, min as it was */
        if (_mm256_movemask_ps(flat[v])) {
            for (int i = 0; i < n; ++i) L[v][i] = _mm256_andnot_ps(flat[v], L[v][i]);
            scale[v] = _mm256_andnot_ps(flat[v], scale[v]);
            vmin[v] = v_blend(vmin[v], min0[v], flat[v]);
        }
        scale_out[v] = scale[v];
        negmin_out[v] = _mm256_xor_ps(vmin[v], _mm256_set1_ps(-0.0f));
    }
}

/* signed element of largest magnitude over the elements of each lane (first wins on ties) */
AVX2_INLINE __m256 signed_absmax8(const __m256 *x, int n, __m256 *amax_out) {
    __m256 am = _mm256_setzero_ps(), max = _mm256_setzero_ps();
    for (int i = 0; i < n; ++i) {
        const __m256 ax = v_abs(x[i]);
        const __m256 gt = _mm256_cmp_ps(ax, am, _CMP_GT_OQ);
        am = v_blend(am, ax, gt);
        max = v_blend(max, x[i], gt);
    }
    *amax_out = am;
    return max;
}

/* ------------------------------------------------------------------------------------------------------------
   make_qx_quants (rmse_type 1, weights x²) on 8 sub-blocks of 16 (fit_symmetric_rmse of quants_k.c).
   Out: L[i] as floats, already offset by +nmax (0 for all-small lanes), and the scale.
   ------------------------------------------------------------------------------------------------------------ */
#define RMSE_N 16
AVX2_INLINE __m256 fit_rmse8(const int nmax, const __m256 *x, __m256 *L, const int G) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 amax;
    const __m256 max = signed_absmax8(x, RMSE_N, &amax);
    const __m256 small = _mm256_cmp_ps(amax, _mm256_set1_ps(GROUP_MAX_EPS), _CMP_LT_OQ);
    __m256 w[RMSE_N], wx[RMSE_N];
    for (int i = 0; i < RMSE_N; ++i) {
        w[i] = _mm256_mul_ps(x[i], x[i]);
        wx[i] = _mm256_mul_ps(w[i], x[i]);
    }
    /* first grid */
    __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)-nmax), max);
    __m256 sumlx = zero, suml2 = zero;
    for (int i = 0; i < RMSE_N; ++i) {
        /* |iscale·x| <= nmax for every lane that is not all-small (|x| <= |max|): in range */
        const __m256 l = v_round_clamp_small(_mm256_mul_ps(iscale, x[i]), (float)-nmax, (float)(nmax - 1));
        L[i] = l;
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(wx[i], l));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w[i], l), l));
    }
    /* scale = suml2 ? sumlx / suml2 : 0 (NaN is true) */
    __m256 scale = _mm256_and_ps(_mm256_cmp_ps(suml2, zero, _CMP_NEQ_UQ), _mm256_div_ps(sumlx, suml2));
    __m256 best = _mm256_mul_ps(scale, sumlx);

    static const int steps[18] = {-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    for (int k0 = 0; k0 < 18; k0 += G) {
        __m256 isc[GMAX], slx[GMAX], sl2[GMAX], Lt[GMAX][RMSE_N];
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
            const float num = -((float)nmax + 0.1f * (float)steps[k0 + g]);
            isc[g] = _mm256_div_ps(_mm256_set1_ps(num), max);
            slx[g] = sl2[g] = zero;
        }
        for (int i = 0; i < RMSE_N; ++i) {
#pragma GCC unroll 4
            for (int g = 0; g < G; ++g) {
                const __m256 l = v_round_clamp_small(_mm256_mul_ps(isc[g], x[i]), (float)-nmax, (float)(nmax - 1));
                Lt[g][i] = l;
                slx[g] = _mm256_add_ps(slx[g], _mm256_mul_ps(wx[i], l));
                sl2[g] = _mm256_add_ps(sl2[g], _mm256_mul_ps(_mm256_mul_ps(w[i], l), l));
            }
        }
        for (int g = 0; g < G; ++g) {
            const __m256 upd = _mm256_and_ps(_mm256_cmp_ps(sl2[g], zero, _CMP_GT_OQ),
                                             _mm256_cmp_ps(_mm256_mul_ps(slx[g], slx[g]), _mm256_mul_ps(best, sl2[g]),
                                                           _CMP_GT_OQ));
            if (_mm256_movemask_ps(upd)) {
                for (int i = 0; i < RMSE_N; ++i) L[i] = v_blend(L[i], Lt[g][i], upd);
                scale = v_blend(scale, _mm256_div_ps(slx[g], sl2[g]), upd);
                best = v_blend(best, _mm256_mul_ps(scale, slx[g]), upd);
            }
        }
    }
    const __m256 off = _mm256_set1_ps((float)nmax);
    for (int i = 0; i < RMSE_N; ++i) L[i] = _mm256_andnot_ps(small, _mm256_add_ps(L[i], off));
    return _mm256_andnot_ps(small, scale);
}

/* ------------------------------------------------------------------------------------------------------------
   make_q3_quants (do_rmse) on 8 sub-blocks of 16 (fit_symmetric_q3 of quants_k.c).
   Out: L[i] as floats offset by +nmax (0 for all-small lanes), and the scale.
   ------------------------------------------------------------------------------------------------------------ */
AVX2_INLINE __m256 fit_q3_8(const int nmax, const __m256 *x, __m256 *L) {
    const int n = 16;
    const __m256 zero = _mm256_setzero_ps();
    __m256 amax;
    const __m256 max = signed_absmax8(x, n, &amax);
    const __m256 small = _mm256_cmp_ps(amax, _mm256_set1_ps(GROUP_MAX_EPS), _CMP_LT_OQ);
    const __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)-nmax), max);
    __m256 w[16], wx[16];
    __m256 sumlx = zero, suml2 = zero;
    for (int i = 0; i < n; ++i) {
        /* |iscale·x| <= nmax for every lane that is not all-small: in range */
        const __m256 l = v_round_clamp_small(_mm256_mul_ps(iscale, x[i]), (float)-nmax, (float)(nmax - 1));
        L[i] = l;
        w[i] = _mm256_mul_ps(x[i], x[i]);
        wx[i] = _mm256_mul_ps(w[i], x[i]);
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(wx[i], l));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w[i], l), l));
    }
    /* a lane whose pass changes nothing is at a fixed point: further passes leave it as it is, so running passes
       until no lane changes (at most 5) equals the scalar per-lane early exit */
    for (int itry = 0; itry < 5; ++itry) {
        __m256 changed = zero;
        for (int i = 0; i < n; ++i) {
            __m256 slx = _mm256_sub_ps(sumlx, _mm256_mul_ps(wx[i], L[i]));
            const __m256 m1 = _mm256_cmp_ps(slx, zero, _CMP_GT_OQ);
            if (!_mm256_movemask_ps(m1)) continue;
            __m256 sl2 = _mm256_sub_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w[i], L[i]), L[i]));
            const __m256 nl = v_round_clamp(_mm256_div_ps(_mm256_mul_ps(x[i], sl2), slx), -nmax, nmax - 1);
            const __m256 m2 = _mm256_and_ps(m1, _mm256_cmp_ps(nl, L[i], _CMP_NEQ_OQ));
            if (!_mm256_movemask_ps(m2)) continue;
            slx = _mm256_add_ps(slx, _mm256_mul_ps(wx[i], nl));
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w[i], nl), nl));
            const __m256 better = _mm256_cmp_ps(_mm256_mul_ps(_mm256_mul_ps(slx, slx), suml2),
                                                _mm256_mul_ps(_mm256_mul_ps(sumlx, sumlx), sl2), _CMP_GT_OQ);
            const __m256 m3 = _mm256_and_ps(_mm256_and_ps(m2, _mm256_cmp_ps(sl2, zero, _CMP_GT_OQ)), better);
            L[i] = v_blend(L[i], nl, m3);
            sumlx = v_blend(sumlx, slx, m3);
            suml2 = v_blend(suml2, sl2, m3);
            changed = _mm256_or_ps(changed, m3);
        }
        if (!_mm256_movemask_ps(changed)) break;
    }
    const __m256 off = _mm256_set1_ps((float)nmax);
    for (int i = 0; i < n; ++i) L[i] = _mm256_andnot_ps(small, _mm256_add_ps(L[i], off));
    const __m256 scale = _mm256_and_ps(_mm256_cmp_ps(suml2, zero, _CMP_GT_OQ), _mm256_div_ps(sumlx, suml2));
    return _mm256_andnot_ps(small, scale);
}

/* ------------------------------------------------------------------------------------------------------------
   Layout helpers for 16 sub-blocks of 16: xt[v][i] lane j = element i of sub-block 8v + j
   ------------------------------------------------------------------------------------------------------------ */
AVX2_INLINE void transpose_16x16(const float *x, __m256 xt[2][16]) {
    for (int v = 0; v < 2; ++v) {
        transpose8(x + 128 * v, 16, xt[v]);
        transpose8(x + 128 * v + 8, 16, xt[v] + 8);
    }
}

/* final quants of the 16 elements of sub-block j: clamp(nearest((x + dm) / d), lo, hi) + off, as 16 bytes */
AVX2_INLINE void requant16(const float *x, float d, float dm, int use_dm, int lo, int hi, int off, uint8_t *dst) {
    const __m256 vd = _mm256_set1_ps(d), vdm = _mm256_set1_ps(dm);
    __m256i q[2];
    for (int k = 0; k < 2; ++k) {
        __m256 v = _mm256_loadu_ps(x + 8 * k);
        if (use_dm) v = _mm256_add_ps(v, vdm);
        q[k] = _mm256_add_epi32(v_round_clampi(_mm256_div_ps(v, vd), lo, hi), _mm256_set1_epi32(off));
    }
    __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(q[0]), _mm256_extracti128_si256(q[0], 1));
    __m128i r = _mm_packs_epi32(_mm256_castsi256_si128(q[1]), _mm256_extracti128_si256(q[1], 1));
    _mm_storeu_si128((__m128i *)dst, _mm_packus_epi16(p, r));
}

/* the first-pass quants of lane j (n elements, Lt[i] lane j) as bytes */
AVX2_INLINE void first_pass_lane(const __m256 *Lt, int j, int n, uint8_t *dst) {
    float tmp[8];
    for (int i = 0; i < n; ++i) {
        _mm256_storeu_ps(tmp, Lt[i]);
        dst[i] = (uint8_t)(int)tmp[j];
    }
}
#define first_pass16(Lt, j, dst) first_pass_lane(Lt, j, 16, dst)

/* ------------------------------------------------------------------------------------------------------------
   Q2_K
   ------------------------------------------------------------------------------------------------------------ */
static AVX2 void quantize_block_q2_K_avx2(const float *x, block_q2_K *y) {
    __m256 xt[2][32], w[2][32], Lt[2][32], sc[2], nm[2];
    for (int v = 0; v < 2; ++v) {
        transpose8(x + 128 * v, 16, xt[v]);
        transpose8(x + 128 * v + 8, 16, xt[v] + 8);
        for (int i = 0; i < 16; ++i) w[v][i] = v_abs(xt[v][i]);
    }
    /* the two halves of the super-block are independent: run them together */
    fit_affine8(2, 16, 3, (const __m256(*)[32])xt, (const __m256(*)[32])w, Lt, sc, nm, -0.5f, 0.1f, 15, 1);
    float scales[16], mins[16];
    _mm256_storeu_ps(scales, sc[0]);
    _mm256_storeu_ps(scales + 8, sc[1]);
    _mm256_storeu_ps(mins, nm[0]);
    _mm256_storeu_ps(mins + 8, nm[1]);

    const float q4scale = 15.f;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
        float iscale = q4scale / max_scale;
        for (int j = 0; j < 16; ++j) y->scales[j] = (uint8_t)tk_nearest_int(iscale * scales[j]);
        y->d = tk_fp32_to_fp16(max_scale / q4scale);
    } else {
        for (int j = 0; j < 16; ++j) y->scales[j] = 0;
        y->d = tk_fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
        float iscale = q4scale / max_min;
        /* shifted unsigned: a min rounded below 0 (rows with non-finite values) is no undefined behaviour */
        for (int j = 0; j < 16; ++j)
            y->scales[j] |= (uint8_t)((unsigned)tk_nearest_int(iscale * mins[j]) << 4);
        y->dmin = tk_fp32_to_fp16(max_min / q4scale);
    } else {
        y->dmin = tk_fp32_to_fp16(0.f);
    }

    uint8_t L[QK_K];
    const float d_all = tk_fp16_to_fp32(y->d), dmin_all = tk_fp16_to_fp32(y->dmin);
    for (int j = 0; j < 16; ++j) {
        const float d = d_all * (y->scales[j] & 0xF);
        if (d == 0.0f) {
            first_pass16(Lt[j / 8], j % 8, L + 16 * j);
            continue;
        }
        const float dm = dmin_all * (y->scales[j] >> 4);
        requant16(x + 16 * j, d, dm, 1, 0, 3, 0, L + 16 * j);
    }
    pack_2bit_v(L, y->qs);
}

void AVX2 quantize_row_q2_K_avx2(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q2_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q2_K_avx2(x + i * QK_K, y + i);
}

/* ------------------------------------------------------------------------------------------------------------
   Q3_K
   ------------------------------------------------------------------------------------------------------------ */
static AVX2 void quantize_block_q3_K_avx2(const float *x, block_q3_K *y) {
    __m256 xt[2][16], Lt[2][16], sc[2];
    transpose_16x16(x, xt);
    for (int v = 0; v < 2; ++v) sc[v] = fit_q3_8(4, xt[v], Lt[v]);
    float scales[16];
    _mm256_storeu_ps(scales, sc[0]);
    _mm256_storeu_ps(scales + 8, sc[1]);

    q3_K_pack_scales(scales, y);

    uint8_t L[QK_K];
    const float d_all = tk_fp16_to_fp32(y->d);
    for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? (y->scales[j] & 0xF) : (y->scales[j - 8] >> 4);
        const int hi = (y->scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        const float d = d_all * ((int8_t)(lo | (hi << 4)) - 32);
        if (d == 0.0f) {
            first_pass16(Lt[j / 8], j % 8, L + 16 * j);
            continue;
        }
        requant16(x + 16 * j, d, 0.f, 0, -4, 3, 4, L + 16 * j);
    }

    /* hmask: bit c of hmask[l] = bit 2 of L[32c + l]; low two bits packed like Q2_K */
    __m256i hm = _mm256_setzero_si256();
    const __m256i one = _mm256_set1_epi8(1), three = _mm256_set1_epi8(3);
    for (int c = 0; c < 8; ++c) {
        __m256i v = load32(L + 32 * c);
        __m256i hb = _mm256_and_si256(_mm256_srli_epi16(v, 2), one);
        hm = _mm256_or_si256(hm, _mm256_sll_epi16(hb, _mm_cvtsi32_si128(c)));
        _mm256_storeu_si256((__m256i *)(L + 32 * c), _mm256_and_si256(v, three));
    }
    _mm256_storeu_si256((__m256i *)y->hmask, hm);
    pack_2bit_v(L, y->qs);
}

void AVX2 quantize_row_q3_K_avx2(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q3_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q3_K_avx2(x + i * QK_K, y + i);
}

/* ------------------------------------------------------------------------------------------------------------
   Q4_K / Q5_K: 8 sub-blocks of 32 = the 8 lanes
   ------------------------------------------------------------------------------------------------------------ */
/* Steps of quantize_scales_mins_k4 for NV super-blocks x[0..NV-1] (fitted together, lane j = sub-block j):
   packed 6-bit scales/mins, d/dmin, and the final quants (0..nmax) in L[v]. */
AVX2_INLINE void scales_mins_k4_avx2(const int NV, const float *const *xs, const int nmax, const float rmin,
                                     const int nstep, uint8_t *const *scales_out, tk_half *const *d_out,
                                     tk_half *const *dmin_out, uint8_t (*L)[QK_K]) {
    __m256 xt[NVMAX][32], w[NVMAX][32], Lt[NVMAX][32], sc[NVMAX], nm[NVMAX];
    for (int v = 0; v < NV; ++v) {
        for (int c = 0; c < 4; ++c) transpose8(xs[v] + 8 * c, 32, xt[v] + 8 * c);
        __m256 sum_x2 = _mm256_setzero_ps();
        for (int i = 0; i < 32; ++i) sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xt[v][i], xt[v][i]));
        const __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.f)));
        for (int i = 0; i < 32; ++i) w[v][i] = _mm256_add_ps(av_x, v_abs(xt[v][i]));
    }
    fit_affine8(NV, 32, nmax, (const __m256(*)[32])xt, (const __m256(*)[32])w, Lt, sc, nm, rmin, 0.1f, nstep, 0);

    for (int v = 0; v < NV; ++v) {
        const float *x = xs[v];
        float scales[8], mins[8];
        _mm256_storeu_ps(scales, sc[v]);
        _mm256_storeu_ps(mins, nm[v]);

        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        uint8_t ls[8], lm[8];
        uint8_t *so = scales_out[v];
        memset(so, 0, K_SCALE_SIZE);
        for (int j = 0; j < 8; ++j) {
            uint8_t a = (uint8_t)tk_nearest_int(inv_scale * scales[j]);
            uint8_t b = (uint8_t)tk_nearest_int(inv_min * mins[j]);
            ls[j] = (uint8_t)imin(63, a);
            lm[j] = (uint8_t)imin(63, b);
            if (j < 4) {
                so[j] = ls[j];
                so[j + 4] = lm[j];
            } else {
                so[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
                so[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
                so[j - 0] |= (uint8_t)((lm[j] >> 4) << 6);
            }
        }
        *d_out[v] = tk_fp32_to_fp16(max_scale / 63.f);
        *dmin_out[v] = tk_fp32_to_fp16(max_min / 63.f);

        /* the stored 6-bit values are exactly ls/lm (they fit in 6 bits), so unpacking gives them back */
        const float d_all = tk_fp16_to_fp32(*d_out[v]), dmin_all = tk_fp16_to_fp32(*dmin_out[v]);
        for (int j = 0; j < 8; ++j) {
            const float d = d_all * ls[j];
            if (d == 0.0f) {
                first_pass_lane(Lt[v], j, 32, L[v] + 32 * j);
                continue;
            }
            const __m256 vd = _mm256_set1_ps(d), vdm = _mm256_set1_ps(dmin_all * lm[j]);
            __m256i q[4];
            for (int k = 0; k < 4; ++k) {
                const __m256 xv = _mm256_add_ps(_mm256_loadu_ps(x + 32 * j + 8 * k), vdm);
                q[k] = v_round_clampi(_mm256_div_ps(xv, vd), 0, nmax);
            }
            store_bytes32(q[0], q[1], q[2], q[3], L[v] + 32 * j);
        }
    }
}

AVX2_INLINE void pack_q4_K(const uint8_t *L, block_q4_K *y) {
    for (int c = 0; c < 4; ++c) {
        /* values < 16: the 16-bit shift never carries across a byte */
        __m256i v = _mm256_or_si256(load32(L + 64 * c), _mm256_slli_epi16(load32(L + 64 * c + 32), 4));
        _mm256_storeu_si256((__m256i *)(y->qs + 32 * c), v);
    }
}

/* NV (1 or 2) consecutive super-blocks */
AVX2_INLINE void quantize_blocks_q4_K_avx2(const int NV, const float *x, block_q4_K *y) {
    uint8_t L[NVMAX][QK_K];
    const float *xs[NVMAX] = {x, x + QK_K};
    uint8_t *so[NVMAX] = {y[0].scales, NV > 1 ? y[1].scales : NULL};
    tk_half *d[NVMAX] = {&y[0].d, NV > 1 ? &y[1].d : NULL};
    tk_half *dm[NVMAX] = {&y[0].dmin, NV > 1 ? &y[1].dmin : NULL};
    scales_mins_k4_avx2(NV, xs, 15, -1.f, 20, so, d, dm, L);
    for (int v = 0; v < NV; ++v) pack_q4_K(L[v], y + v);
}

void AVX2 quantize_row_q4_K_avx2(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q4_K *y = vy;
    const int64_t nb = k / QK_K;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) quantize_blocks_q4_K_avx2(2, x + i * QK_K, y + i);
    if (i < nb) quantize_blocks_q4_K_avx2(1, x + i * QK_K, y + i);
}

AVX2_INLINE void pack_q5_K(const uint8_t *L, block_q5_K *y) {
    const __m256i lo4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
    __m256i qh = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
        const __m256i a = load32(L + 64 * c), b = load32(L + 64 * c + 32);
        const __m256i ql = _mm256_or_si256(_mm256_and_si256(a, lo4), _mm256_slli_epi16(_mm256_and_si256(b, lo4), 4));
        _mm256_storeu_si256((__m256i *)(y->qs + 32 * c), ql);
        /* bit 4 of a → qh bit 2c, of b → bit 2c + 1 (shifted values are 0/1: no carry across bytes) */
        const __m256i ha = _mm256_and_si256(_mm256_srli_epi16(a, 4), one);
        const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(b, 4), one);
        qh = _mm256_or_si256(qh, _mm256_sll_epi16(ha, _mm_cvtsi32_si128(2 * c)));
        qh = _mm256_or_si256(qh, _mm256_sll_epi16(hb, _mm_cvtsi32_si128(2 * c + 1)));
    }
    _mm256_storeu_si256((__m256i *)y->qh, qh);
}

AVX2_INLINE void quantize_blocks_q5_K_avx2(const int NV, const float *x, block_q5_K *y) {
    uint8_t L[NVMAX][QK_K];
    const float *xs[NVMAX] = {x, x + QK_K};
    uint8_t *so[NVMAX] = {y[0].scales, NV > 1 ? y[1].scales : NULL};
    tk_half *d[NVMAX] = {&y[0].d, NV > 1 ? &y[1].d : NULL};
    tk_half *dm[NVMAX] = {&y[0].dmin, NV > 1 ? &y[1].dmin : NULL};
    scales_mins_k4_avx2(NV, xs, 31, -0.5f, 15, so, d, dm, L);
    for (int v = 0; v < NV; ++v) pack_q5_K(L[v], y + v);
}

void AVX2 quantize_row_q5_K_avx2(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q5_K *y = vy;
    const int64_t nb = k / QK_K;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) quantize_blocks_q5_K_avx2(2, x + i * QK_K, y + i);
    if (i < nb) quantize_blocks_q5_K_avx2(1, x + i * QK_K, y + i);
}

/* ------------------------------------------------------------------------------------------------------------
   Q6_K
   ------------------------------------------------------------------------------------------------------------ */
static AVX2 void quantize_block_q6_K_avx2(const float *x, block_q6_K *y) {
    __m256 xt[2][16], Lt[2][16], sc[2];
    transpose_16x16(x, xt);
    for (int v = 0; v < 2; ++v) sc[v] = fit_rmse8(32, xt[v], Lt[v], 3);
    float scales[16];
    _mm256_storeu_ps(scales, sc[0]);
    _mm256_storeu_ps(scales + 8, sc[1]);

    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
        const float abs_scale = fabsf(scales[ib]);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scales[ib]; }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, sizeof *y);
        y->d = tk_fp32_to_fp16(0.f);
        return;
    }
    float iscale = -128.f / max_scale;
    y->d = tk_fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < 16; ++ib) y->scales[ib] = (int8_t)imin(127, tk_nearest_int(iscale * scales[ib]));

    uint8_t L[QK_K];
    const float d_all = tk_fp16_to_fp32(y->d);
    for (int j = 0; j < 16; ++j) {
        const float d = d_all * y->scales[j];
        if (d == 0.0f) {
            first_pass16(Lt[j / 8], j % 8, L + 16 * j);
            continue;
        }
        requant16(x + 16 * j, d, 0.f, 0, -32, 31, 32, L + 16 * j);
    }

    const __m256i lo4 = _mm256_set1_epi8(0xF), three = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
        const uint8_t *p = L + 128 * h;
        const __m256i a = load32(p), b = load32(p + 32), c = load32(p + 64), d = load32(p + 96);
        /* values < 64: masked nibbles and 2-bit fields never carry across bytes in 16-bit shifts */
        const __m256i q13 = _mm256_or_si256(_mm256_and_si256(a, lo4), _mm256_slli_epi16(_mm256_and_si256(c, lo4), 4));
        const __m256i q24 = _mm256_or_si256(_mm256_and_si256(b, lo4), _mm256_slli_epi16(_mm256_and_si256(d, lo4), 4));
        _mm256_storeu_si256((__m256i *)(y->ql + 64 * h), q13);
        _mm256_storeu_si256((__m256i *)(y->ql + 64 * h + 32), q24);
        __m256i qh = _mm256_and_si256(_mm256_srli_epi16(a, 4), three);
        qh = _mm256_or_si256(qh, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), three), 2));
        qh = _mm256_or_si256(qh, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(c, 4), three), 4));
        qh = _mm256_or_si256(qh, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(d, 4), three), 6));
        _mm256_storeu_si256((__m256i *)(y->qh + 32 * h), qh);
    }
}

void AVX2 quantize_row_q6_K_avx2(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q6_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q6_K_avx2(x + i * QK_K, y + i);
}

/* ------------------------------------------------------------------------------------------------------------
   Q8_K, the activations of every k-quant product (converted once per matrix product and token): the reference's
   bytes. The largest magnitude by vector maxima (a NaN lane never wins, as in the reference's strict > scan), its
   first element as the sign, then per element the reference's one multiply, rounding, clamp and int8 cast (its low
   byte, when a tiny maximum overflows the scale); exact group sums.
   ------------------------------------------------------------------------------------------------------------ */
static AVX2 void quantize_block_q8_K_avx2(const float *x, block_q8_K *y) {
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < QK_K; i += 8) m = _mm256_max_ps(v_abs(_mm256_loadu_ps(x + i)), m);  /* NaN: m kept */
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    if (!(amax > 0)) {
        memset(y, 0, sizeof *y);
        return;
    }
    int j = 0;
    while (fabsf(x[j]) != amax) j++;
    const float iscale = -127.f / x[j];
    const __m256 vs = _mm256_set1_ps(iscale);
    for (int g = 0; g < QK_K; g += 32) {
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_min_epi32(v_nearest(_mm256_mul_ps(_mm256_loadu_ps(x + g + 8 * k), vs)),
                                               _mm256_set1_epi32(127));
            q[k] = _mm256_srai_epi32(_mm256_slli_epi32(v, 24), 24);  /* as the reference's int8_t cast keeps it */
        }
        for (int k = 0; k < 4; k += 2) {
            const __m256i s = _mm256_add_epi32(q[k], q[k + 1]);
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
            y->bsums[g / 16 + k / 2] = (int16_t)_mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 1)));
        }
        /* to bytes in element order (the packs interleave the 128-bit lanes) */
        const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256((__m256i *)(y->qs + g), _mm256_permutevar8x32_epi32(b, order));
    }
    y->d = 1 / iscale;
}

void AVX2 quantize_row_q8_K_avx2(const float *x, void *vy, int64_t k) {
    assert(k % QK_K == 0);
    block_q8_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q8_K_avx2(x + i * QK_K, y + i);
}

#else /* not x86: the table never selects these, but keep the symbols */

void quantize_row_q8_K_avx2(const float *x, void *y, int64_t k) { quantize_row_q8_K_ref(x, y, k); }

void quantize_row_q2_K_avx2(const float *x, void *y, int64_t k) { quantize_row_q2_K_ref(x, y, k); }
void quantize_row_q3_K_avx2(const float *x, void *y, int64_t k) { quantize_row_q3_K_ref(x, y, k); }
void quantize_row_q4_K_avx2(const float *x, void *y, int64_t k) { quantize_row_q4_K_ref(x, y, k); }
void quantize_row_q5_K_avx2(const float *x, void *y, int64_t k) { quantize_row_q5_K_ref(x, y, k); }
void quantize_row_q6_K_avx2(const float *x, void *y, int64_t k) { quantize_row_q6_K_ref(x, y, k); }

#endif
