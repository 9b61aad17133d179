/* AVX2 of the IQ2 and IQ3 quantizers' neighbour search (best_neighbour in quants_iq2.c and quants_iq3.c): eight
   neighbours of an off-grid 8- or 4-tuple at a time (their values as floats, laid out by the grid for these loads),
   each lane the scalar weighted distance Σ w·(scale·q − x)·(scale·q − x) in its order (mul, then
   add; no FMA), each lane keeping its first smallest distance below FLT_MAX; the lanes' smallest, the first in list
   order among equals, is the scalar scan's. Same bits as the scalar path. */
#include <float.h>

#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

AVX2 int tk_best_neighbour_avx2(const float *values, size_t stride, int nvalues, int count, const float *x,
                                const float *w, float scale) {
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 best = _mm256_set1_ps(FLT_MAX);
    __m256i best_j = _mm256_set1_epi32(-1);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j0 = 0; j0 < count; j0 += 8) {
        __m256 d2 = _mm256_setzero_ps();
        for (int i = 0; i < nvalues; ++i) {
            const __m256 q = _mm256_loadu_ps(values + i * stride + j0);
            const __m256 diff = _mm256_sub_ps(_mm256_mul_ps(vscale, q), _mm256_set1_ps(x[i]));
            d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w[i]), diff), diff));
        }
        const __m256i j = _mm256_add_epi32(lane, _mm256_set1_epi32(j0));
        const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(count), j));
        const __m256 better = _mm256_and_ps(valid, _mm256_cmp_ps(d2, best, _CMP_LT_OQ));
        best = _mm256_blendv_ps(best, d2, better);
        best_j = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best_j), _mm256_castsi256_ps(j), better));
    }
    /* the smallest of the lanes' minima (a lane that found none holds FLT_MAX), then the first position holding it */
    __m256 m = _mm256_min_ps(best, _mm256_permute2f128_ps(best, best, 1));
    m = _mm256_min_ps(m, _mm256_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm256_min_ps(m, _mm256_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    if (_mm256_cvtss_f32(m) == FLT_MAX) return 0;
    __m256i j = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(INT32_MAX)),
                                                     _mm256_castsi256_ps(best_j), _mm256_cmp_ps(best, m, _CMP_EQ_OQ)));
    j = _mm256_min_epi32(j, _mm256_permute2x128_si256(j, j, 1));
    j = _mm256_min_epi32(j, _mm256_shuffle_epi32(j, _MM_SHUFFLE(1, 0, 3, 2)));
    j = _mm256_min_epi32(j, _mm256_shuffle_epi32(j, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm256_cvtsi256_si32(j);
}

#endif
