/* AVX2 dot products of the IQ1_S and IQ1_M weights (quants_iq1.c) with Q8_K activations, in the float order of
   ggml's AVX2 kernels (ggml-cpu/arch/x86/quants.c): the grid patterns gathered four at a time, exact integer sums
   per 8-lane accumulator, one FMA per super-block into 8 float lanes, and the shift terms (IQ1_S: a scalar sum of
   the activation block sums, contracted into one FMA as ggml's build does; IQ1_M: a second 8-lane accumulator). */
#include <math.h>
#include <string.h>

#include "quants_iq1.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

static inline AVX2 __m256i grid4(int i0, int i1, int i2, int i3) {
    return _mm256_set_epi64x((long long)tk_iq1s_grid[i3], (long long)tk_iq1s_grid[i2], (long long)tk_iq1s_grid[i1],
                             (long long)tk_iq1s_grid[i0]);
}

AVX2 void tk_vec_dot_iq1_s_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq1_s *x = vx;
    const block_q8_K *y = vy;
    __m256 accum = _mm256_setzero_ps();
    float accum1 = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        const uint8_t *qs = x[i].qs;
        const uint16_t *qh = x[i].qh;
        __m256i sumi = _mm256_setzero_si256();
        int sumi1 = 0;
        for (int ib = 0; ib < QK_K / 32; ib += 2, qs += 8, q8 += 64) {
            const __m256i q1_1 = grid4(qs[0] | ((qh[ib] << 8) & 0x700), qs[1] | ((qh[ib] << 5) & 0x700),
                                       qs[2] | ((qh[ib] << 2) & 0x700), qs[3] | ((qh[ib] >> 1) & 0x700));
            const __m256i q1_2 = grid4(qs[4] | ((qh[ib + 1] << 8) & 0x700), qs[5] | ((qh[ib + 1] << 5) & 0x700),
                                       qs[6] | ((qh[ib + 1] << 2) & 0x700), qs[7] | ((qh[ib + 1] >> 1) & 0x700));
            const __m256i dot1 = pairs_s8(q1_1, _mm256_loadu_si256((const __m256i *)q8));
            const __m256i dot2 = pairs_s8(q1_2, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            const int16_t ls1 = (int16_t)(2 * ((qh[ib] >> 12) & 7) + 1);
            const int16_t ls2 = (int16_t)(2 * ((qh[ib + 1] >> 12) & 7) + 1);
            const __m256i p1 = _mm256_madd_epi16(dot1, _mm256_set1_epi16(ls1));
            const __m256i p2 = _mm256_madd_epi16(dot2, _mm256_set1_epi16(ls2));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p1, p2));
            sumi1 += (y[i].bsums[2 * ib] + y[i].bsums[2 * ib + 1]) * (qh[ib] & 0x8000 ? -1 : 1) * ls1 +
                     (y[i].bsums[2 * ib + 2] + y[i].bsums[2 * ib + 3]) * (qh[ib + 1] & 0x8000 ? -1 : 1) * ls2;
        }
        const float d = y[i].d * tk_fp16_table[x[i].d];
        accum = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), accum);
        accum1 = fmaf(d, (float)sumi1, accum1);
    }
    *s = fmaf(IQ1_DELTA, accum1, hsum8(accum));
}

/* the 16 int16 lanes: scale a for the first 8 (elements 0..15 of a block of 32), scale b for the next 8 */
static inline AVX2 __m256i two_scales(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi16((int16_t)b), _mm_set1_epi16((int16_t)a));
}

/* 8 bytes of +1, or of -1 when the shift bit is set */
static inline AVX2 long long shift_signs(int set) { return set ? -1LL : 0x0101010101010101LL; }

AVX2 void tk_vec_dot_iq1_m_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq1_m *x = vx;
    const block_q8_K *y = vy;
    const __m256i one8 = _mm256_set1_epi8(1);
    __m256 accum1 = _mm256_setzero_ps(), accum2 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        const uint8_t *qs = x[i].qs, *qh = x[i].qh;
        uint16_t sc[4];
        memcpy(sc, x[i].scales, sizeof(sc));
        const uint16_t scale = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) |
                                          (sc[3] & 0xf000));
        __m256i sumi1 = _mm256_setzero_si256(), sumi2 = _mm256_setzero_si256();
        for (int ib = 0; ib < QK_K / 32; ib += 2, qs += 8, qh += 4, q8 += 64) {
            const __m256i q1_1 = grid4(qs[0] | ((qh[0] << 8) & 0x700), qs[1] | ((qh[0] << 4) & 0x700),
                                       qs[2] | ((qh[1] << 8) & 0x700), qs[3] | ((qh[1] << 4) & 0x700));
            const __m256i q1_2 = grid4(qs[4] | ((qh[2] << 8) & 0x700), qs[5] | ((qh[2] << 4) & 0x700),
                                       qs[6] | ((qh[3] << 8) & 0x700), qs[7] | ((qh[3] << 4) & 0x700));
            const __m256i delta1 = _mm256_set_epi64x(shift_signs(qh[1] & 0x80), shift_signs(qh[1] & 0x08),
                                                     shift_signs(qh[0] & 0x80), shift_signs(qh[0] & 0x08));
            const __m256i delta2 = _mm256_set_epi64x(shift_signs(qh[3] & 0x80), shift_signs(qh[3] & 0x08),
                                                     shift_signs(qh[2] & 0x80), shift_signs(qh[2] & 0x08));
            const __m256i q8_1 = _mm256_loadu_si256((const __m256i *)q8);
            const __m256i q8_2 = _mm256_loadu_si256((const __m256i *)(q8 + 32));
            const __m256i dot1 = pairs_s8(q1_1, q8_1), dot2 = pairs_s8(q1_2, q8_2);
            const __m256i dot3 = _mm256_maddubs_epi16(one8, _mm256_sign_epi8(q8_1, delta1));
            const __m256i dot4 = _mm256_maddubs_epi16(one8, _mm256_sign_epi8(q8_2, delta2));
            const unsigned w = sc[ib / 2]; /* the four 3-bit scales of blocks ib and ib + 1 */
            const __m256i scale1 = two_scales(2 * (w & 7) + 1, 2 * ((w >> 3) & 7) + 1);
            const __m256i scale2 = two_scales(2 * ((w >> 6) & 7) + 1, 2 * ((w >> 9) & 7) + 1);
            sumi1 = _mm256_add_epi32(sumi1, _mm256_add_epi32(_mm256_madd_epi16(dot1, scale1),
                                                             _mm256_madd_epi16(dot2, scale2)));
            sumi2 = _mm256_add_epi32(sumi2, _mm256_add_epi32(_mm256_madd_epi16(dot3, scale1),
                                                             _mm256_madd_epi16(dot4, scale2)));
        }
        const __m256 d = _mm256_set1_ps(y[i].d * tk_fp16_table[scale]);
        accum1 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi1), accum1);
        accum2 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi2), accum2);
    }
    *s = fmaf(IQ1_DELTA, hsum8(accum2), hsum8(accum1));
}

#endif
