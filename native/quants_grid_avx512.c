/* AVX512 of the IQ2/IQ3 quantizers' nearest-neighbour search (quants_grid.h; scalar in quants_grid.c): 16
   neighbours at a time, so that most lists (up to 16 neighbours) take one pass and a mask instead of a lane
   reduction; each lane the scalar arithmetic in its order (mul, then add; no FMA). Same bits as the scalar form. */
#include <float.h>
#include <string.h>

#include "quants_grid.h"

#if defined(__x86_64__) || defined(__i386__)
#include "dot_x86.h"

/* each lane keeps its first smallest distance below FLT_MAX; the smallest of the lanes', the first in list order
   among equals, is the scalar scan's */
AVX512 int tk_grid_nearest_avx512(const int8_t *block, int stride, int nvalues, int count, const float *x,
                                  const float *w, float scale) {
    const __m512 vscale = _mm512_set1_ps(scale);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 best = _mm512_set1_ps(FLT_MAX);
    __m512i best_j = _mm512_setzero_si512();
    __mmask16 found = 0;
    for (int j0 = 0; j0 < count; j0 += 16) {
        __m512 d2 = _mm512_setzero_ps();
        for (int i = 0; i < nvalues; ++i) {
            const __m128i q8 = _mm_loadu_si128((const __m128i *)(block + i * stride + j0));
            const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8));
            const __m512 diff = _mm512_sub_ps(_mm512_mul_ps(vscale, q), _mm512_set1_ps(x[i]));
            d2 = _mm512_add_ps(d2, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(w[i]), diff), diff));
        }
        const __mmask16 valid = count - j0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - j0)) - 1);
        const __mmask16 better = _mm512_mask_cmp_ps_mask(valid, d2, best, _CMP_LT_OQ);
        best = _mm512_mask_mov_ps(best, better, d2);
        best_j = _mm512_mask_mov_epi32(best_j, better, _mm512_add_epi32(lane, _mm512_set1_epi32(j0)));
        found |= better;
    }
    if (!found) return 0;
    const float m = _mm512_mask_reduce_min_ps(found, best);
    return _mm512_mask_reduce_min_epi32(_mm512_mask_cmp_ps_mask(found, best, _mm512_set1_ps(m), _CMP_EQ_OQ), best_j);
}

#endif
