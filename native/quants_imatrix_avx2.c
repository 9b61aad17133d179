/* AVX2 of the imatrix quantizers' affine grid search (fit_affine_weighted in quants_imatrix.c, ggml's
   make_qkx3_quants): `count` <= 8 consecutive stretched grids from `first` in the lanes, all with the same min; the
   first lane that improves on best_err is returned, with its quants, scale, min and error (the caller starts again
   after it with its min, as the scalar loop's min changes there), `count` if none does; each lane doing its grid's sums and error element by element in the scalar order (mul,
   then add; no FMA); n <= 32. Rounding: cvtps_epi32 rounds half to even, as
   tk_nearest_int does for the values in [0, nmax] met here. Same bits as the scalar path. */
#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

AVX2 int tk_affine_steps_avx2(int n, int nmax, const float *x, const float *w, float min, float max, float sum_w,
                              float sum_x, float rmin, float rdelta, int first, int count, float best_err, uint8_t *L,
                              float *scale, float *the_min, float *err) {
    const __m256 vmin = _mm256_set1_ps(min), vnmax = _mm256_set1_ps((float)nmax), zero = _mm256_setzero_ps();
    const __m256 vsw = _mm256_set1_ps(sum_w), vsx = _mm256_set1_ps(sum_x);
    __m256 lf[32];
    int32_t li[32][8];
    {
        float is[8];
        for (int k = 0; k < 8; ++k) is[k] = (rmin + rdelta * (first + (k < count ? k : 0)) + nmax) / (max - min);
        const __m256 iscale = _mm256_loadu_ps(is);
        __m256 sl = zero, sl2 = zero, sxl = zero;
        for (int i = 0; i < n; ++i) {
            const __m256 xi = _mm256_set1_ps(x[i]), wi = _mm256_set1_ps(w[i]);
            const __m256 v = _mm256_mul_ps(iscale, _mm256_sub_ps(xi, vmin));
            /* v > 0 ? nearest(v < nmax ? v : nmax) : 0 */
            const __m256i l = _mm256_and_si256(_mm256_cvtps_epi32(_mm256_min_ps(v, vnmax)),
                                               _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_GT_OQ)));
            _mm256_storeu_si256((__m256i *)li[i], l);
            const __m256 lv = lf[i] = _mm256_cvtepi32_ps(l);
            const __m256 wl = _mm256_mul_ps(wi, lv);
            sl = _mm256_add_ps(sl, wl);
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(wl, lv));
            sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wl, xi));
        }
        const __m256 d = _mm256_sub_ps(_mm256_mul_ps(vsw, sl2), _mm256_mul_ps(sl, sl));
        __m256 ts = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(vsw, sxl), _mm256_mul_ps(vsx, sl)), d);
        __m256 tm = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sl2, vsx), _mm256_mul_ps(sl, sxl)), d);
        /* this_min > 0: this_min = 0, this_scale = sum_xl / sum_l2 */
        const __m256 pos = _mm256_cmp_ps(tm, zero, _CMP_GT_OQ);
        ts = _mm256_blendv_ps(ts, _mm256_div_ps(sxl, sl2), pos);
        tm = _mm256_blendv_ps(tm, zero, pos);
        __m256 e = zero;
        for (int i = 0; i < n; ++i) {
            const __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(ts, lf[i]), tm), _mm256_set1_ps(x[i]));
            e = _mm256_add_ps(e, _mm256_mul_ps(_mm256_set1_ps(w[i]), _mm256_mul_ps(diff, diff)));
        }
        float a[8], b[8], c[8], f[8];
        _mm256_storeu_ps(a, d);
        _mm256_storeu_ps(b, ts);
        _mm256_storeu_ps(c, tm);
        _mm256_storeu_ps(f, e);
        for (int k = 0; k < count; ++k) {
            if (a[k] > 0 && f[k] < best_err) {
                for (int i = 0; i < n; ++i) L[i] = (uint8_t)li[i][k];
                *scale = b[k];
                *the_min = c[k];
                *err = f[k];
                return k;
            }
        }
        return count;
    }
}

/* fit_symmetric_weighted's 18 grids −(nmax + 0.1·is)/max, is = −9..−1, 1..9 (make_qx_quants with weights), in three
   registers of lanes: Σw·x·l and Σw·l² of each, in the scalar order; n <= 32 */
AVX2 void tk_symmetric_tries_avx2(int n, int nmax, const float *x, const float *w, float max, float *sumlx,
                                  float *suml2) {
    float is[24];
    for (int k = 0; k < 24; ++k) {
        const int t = k < 9 ? k - 9 : k < 18 ? k - 8 : 9;
        is[k] = -(nmax + 0.1f * t) / max;
    }
    const __m256i lo = _mm256_set1_epi32(-nmax), hi = _mm256_set1_epi32(nmax - 1);
    for (int g = 0; g < 3; ++g) {
        const __m256 iscale = _mm256_loadu_ps(is + 8 * g);
        __m256 slx = _mm256_setzero_ps(), sl2 = _mm256_setzero_ps();
        for (int i = 0; i < n; ++i) {
            const __m256 xi = _mm256_set1_ps(x[i]), wi = _mm256_set1_ps(w[i]);
            const __m256i l = _mm256_max_epi32(lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(iscale, xi))));
            const __m256 lf = _mm256_cvtepi32_ps(l);
            slx = _mm256_add_ps(slx, _mm256_mul_ps(_mm256_mul_ps(wi, xi), lf));
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(wi, lf), lf));
        }
        float a[8], b[8];
        _mm256_storeu_ps(a, slx);
        _mm256_storeu_ps(b, sl2);
        for (int k = 0; k < 8 && 8 * g + k < 18; ++k) {
            sumlx[8 * g + k] = a[k];
            suml2[8 * g + k] = b[k];
        }
    }
}

#endif
