/* AVX2 dot products of the IQ3_XXS and IQ3_S weights (quants_iq3.c) with Q8_K activations, in the float order of
   ggml's AVX2 kernels (ggml-cpu/arch/x86/quants.c): per pair of 32-element sub-blocks, the grid entries gathered into
   one register each, the activations' signs flipped (IQ3_XXS: by the ±1 bytes of the 7-bit groups; IQ3_S: by the
   sign bits expanded to byte masks), unsigned × signed pair sums weighted by the 2·scale + 1 of each sub-block in
   exact int32 lanes; one fused multiply-add of d per super-block into 8 float lanes, summed at the end. */
#include <string.h>

#include "quants_iq3.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

/* lanes += (values · signed activations, pairwise) · (2·ls + 1) */
static inline AVX2 __m256i scaled_dot(__m256i lanes, __m256i values, __m256i q8s, unsigned ls) {
    const __m256i dot = _mm256_maddubs_epi16(values, q8s);
    return _mm256_add_epi32(lanes, _mm256_madd_epi16(dot, _mm256_set1_epi16((short)(2 * ls + 1))));
}

AVX2 void tk_vec_dot_iq3_xxs_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq3_xxs *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = tk_fp16_table[x[i].d] * y[i].d;
        const uint8_t *q3 = x[i].qs, *gas = x[i].qs + QK_K / 4;
        const int8_t *q8 = y[i].qs;
        __m256i sum1 = _mm256_setzero_si256(), sum2 = _mm256_setzero_si256();
        for (int ib = 0; ib < QK_K / 32; ib += 2, q3 += 16, gas += 8, q8 += 64) {
            uint32_t w[2];
            memcpy(w, gas, 8);
            int idx1[8], idx2[8];
            for (int j = 0; j < 8; ++j) idx1[j] = q3[j], idx2[j] = q3[8 + j];
            const __m256i s1 = _mm256_set_epi64x((long long)tk_iq3_even_signs[w[0] >> 21 & 127],
                                                 (long long)tk_iq3_even_signs[w[0] >> 14 & 127],
                                                 (long long)tk_iq3_even_signs[w[0] >> 7 & 127],
                                                 (long long)tk_iq3_even_signs[w[0] & 127]);
            const __m256i s2 = _mm256_set_epi64x((long long)tk_iq3_even_signs[w[1] >> 21 & 127],
                                                 (long long)tk_iq3_even_signs[w[1] >> 14 & 127],
                                                 (long long)tk_iq3_even_signs[w[1] >> 7 & 127],
                                                 (long long)tk_iq3_even_signs[w[1] & 127]);
            const __m256i q8s1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q8), s1);
            const __m256i q8s2 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q8 + 32)), s2);
            sum1 = scaled_dot(sum1, grid8(tk_iq3xxs_grid, idx1), q8s1, w[0] >> 28);
            sum2 = scaled_dot(sum2, grid8(tk_iq3xxs_grid, idx2), q8s2, w[1] >> 28);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sum1, sum2)), acc);
    }
    *s = 0.25f * hsum8(acc);
}

/* the 32 activations of a sub-block with the signs of 4 sign bytes applied (negated where a bit is set) */
static inline AVX2 __m256i signed_q8(const int8_t *q8, const uint8_t *signs) {
    uint32_t sw;
    memcpy(&sw, signs, 4);
    return negate_bits32(_mm256_loadu_si256((const __m256i *)q8), sw);
}

AVX2 void tk_vec_dot_iq3_s_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq3_s *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = tk_fp16_table[x[i].d] * y[i].d;
        const uint8_t *qs = x[i].qs, *signs = x[i].signs;
        const int8_t *q8 = y[i].qs;
        __m256i sum1 = _mm256_setzero_si256(), sum2 = _mm256_setzero_si256();
        for (int ib = 0; ib < QK_K / 32; ib += 2, qs += 16, signs += 8, q8 += 64) {
            const uint8_t sc = x[i].scales[ib / 2];
            sum1 = scaled_dot(sum1, grid8_9bit(tk_iq3s_grid, qs, x[i].qh[ib]), signed_q8(q8, signs), sc & 0xF);
            sum2 = scaled_dot(sum2, grid8_9bit(tk_iq3s_grid, qs + 8, x[i].qh[ib + 1]),
                              signed_q8(q8 + 32, signs + 4), sc >> 4);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sum1, sum2)), acc);
    }
    *s = hsum8(acc);
}

#endif
