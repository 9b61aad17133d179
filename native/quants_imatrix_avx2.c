/* AVX2 of the imatrix quantizers' affine grid search (fit_affine_weighted in quants_imatrix.c, ggml's
   make_qkx3_quants): `count` <= 8 consecutive stretched grids from `first` in the lanes, all with the same min (the
   caller keeps the lanes up to the first one that improves and starts again after it with its min, as the scalar
   loop's min changes there), each lane doing its grid's sums and error element by element in the scalar order (mul,
   then add; no FMA); n <= 32. Rounding: cvtps_epi32 rounds half to even, as
   tk_nearest_int does for the values in [0, nmax] met here. Same bits as the scalar path. */
#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

AVX2 void tk_affine_steps_avx2(int n, int nmax, const float *x, const float *w, float min, float max, float sum_w,
                               float sum_x, float rmin, float rdelta, int first, int count, float *D, float *scale,
                               float *the_min, float *err) {
    const __m256 vmin = _mm256_set1_ps(min), vnmax = _mm256_set1_ps((float)nmax), zero = _mm256_setzero_ps();
    const __m256 vsw = _mm256_set1_ps(sum_w), vsx = _mm256_set1_ps(sum_x);
    __m256 lf[32];
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
            const __m256 L = lf[i] = _mm256_cvtepi32_ps(l);
            const __m256 wl = _mm256_mul_ps(wi, L);
            sl = _mm256_add_ps(sl, wl);
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(wl, L));
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
            D[k] = a[k];
            scale[k] = b[k];
            the_min[k] = c[k];
            err[k] = f[k];
        }
    }
}

#endif
