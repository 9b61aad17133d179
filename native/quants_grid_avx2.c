/* AVX2 of the IQ2/IQ3 quantizers' shared search (quants_grid.h; the scalar forms in quants_grid.c): 8 steps
   at a time for the levels and the sums, 8 neighbours at a time for the nearest point, each lane the scalar
   arithmetic in its order (mul, then add; no FMA). Same bits as the scalar forms. */
#include <float.h>
#include <string.h>

#include "quants_grid.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

/* nearest as tk_nearest_int (the float-mantissa rounding: the same integer for every input, infinities and NaN
   included) */
AVX2 void tk_grid_levels_avx2(const struct tk_grid_shape *shape, const float *xval, const float *ids, int nlanes,
                              int8_t *Lt, int32_t *u) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), magic = _mm256_set1_ps(12582912.f);
    const __m256i mantissa = _mm256_set1_epi32(0x007fffff), bias = _mm256_set1_epi32(0x00400000);
    const __m256i top = _mm256_set1_epi32(shape->top), zero = _mm256_setzero_si256();
    /* the low byte of each 32-bit lane into the low 4 bytes of its 128-bit half */
    const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                               0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (int v = 0; v < nlanes; v += 8) {
        const __m256 id = _mm256_loadu_ps(ids + v);
        for (int k = 0; k < shape->ntuples; ++k) {
            __m256i code = zero;
            for (int i = 0; i < shape->tuple_len; ++i) {
                const int e = k * shape->tuple_len + i;
                const __m256 t = _mm256_mul_ps(half, _mm256_sub_ps(_mm256_mul_ps(id, _mm256_set1_ps(xval[e])), one));
                const __m256i bits = _mm256_castps_si256(_mm256_add_ps(t, magic));
                __m256i l = _mm256_sub_epi32(_mm256_and_si256(bits, mantissa), bias);
                l = _mm256_min_epi32(_mm256_max_epi32(l, zero), top);
                code = _mm256_or_si256(code, _mm256_sll_epi32(l, _mm_cvtsi32_si128(shape->bits * i)));
                const __m256i b = _mm256_shuffle_epi8(l, low_bytes);
                const uint64_t packed = (uint32_t)_mm256_cvtsi256_si32(b) |
                                        (uint64_t)(uint32_t)_mm256_extract_epi32(b, 4) << 32;
                memcpy(Lt + e * TK_GRID_LANES + v, &packed, 8);
            }
            _mm256_storeu_si256((__m256i *)(u + k * TK_GRID_LANES + v), code);
        }
    }
}

AVX2 void tk_grid_sums_avx2(int n, const float *xval, const float *w, const int8_t *Lt, int nlanes, float *sumqx,
                            float *sumq2) {
    const __m256i one = _mm256_set1_epi32(1);
    for (int v = 0; v < nlanes; v += 8) {
        __m256 sqx = _mm256_setzero_ps(), sq2 = _mm256_setzero_ps();
        for (int i = 0; i < n; ++i) {
            const __m128i l8 = _mm_loadl_epi64((const __m128i *)(Lt + i * TK_GRID_LANES + v));
            const __m256 q = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32(_mm256_cvtepi8_epi32(l8), 1), one));
            const __m256 wi = _mm256_set1_ps(w[i]);
            sqx = _mm256_add_ps(sqx, _mm256_mul_ps(_mm256_set1_ps(w[i] * xval[i]), q));
            sq2 = _mm256_add_ps(sq2, _mm256_mul_ps(_mm256_mul_ps(wi, q), q));
        }
        _mm256_storeu_ps(sumqx + v, sqx);
        _mm256_storeu_ps(sumq2 + v, sq2);
    }
}

/* each lane keeps its first smallest distance below FLT_MAX; the lanes' smallest, the first in list order among
   equals, is the scalar scan's */
AVX2 int tk_grid_nearest_avx2(const int8_t *block, int stride, int nvalues, int count, const float *x, const float *w,
                              float scale) {
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 best = _mm256_set1_ps(FLT_MAX);
    __m256i best_j = _mm256_set1_epi32(-1);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j0 = 0; j0 < count; j0 += 8) {
        __m256 d2 = _mm256_setzero_ps();
        for (int i = 0; i < nvalues; ++i) {
            const __m128i q8 = _mm_loadl_epi64((const __m128i *)(block + i * stride + j0));
            const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
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
