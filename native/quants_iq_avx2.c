/* AVX2 dot products of the IQ4_NL and IQ4_XS weights (quants_iq.c) with their activations: the 4-bit indices looked
   up in the value table by a byte shuffle, exact integer sums; IQ4_NL in the float order of ggml's AVX2 kernel
   (ggml-cpu/arch/x86/quants.c: two 8-lane accumulators over even and odd blocks, an odd last block added in scalar),
   IQ4_XS in the scalar kernel's super-block order (each super-block's scaled integer sum, then its float step). */
#include <math.h>

#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

AVX2 void tk_vec_dot_iq4_nl_q8_0_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    const int64_t nb = n / QK;
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tk_iq4nl_values));
    const __m256i one = _mm256_set1_epi16(1);
    __m256 acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
    int64_t ib = 0;
    for (; ib + 1 < nb; ib += 2) {
        const __m256i p1 = _mm256_madd_epi16(pairs_s8(iq4_values32(x[ib].qs, table),
                                                      _mm256_loadu_si256((const __m256i *)y[ib].qs)), one);
        const __m256i p2 = _mm256_madd_epi16(pairs_s8(iq4_values32(x[ib + 1].qs, table),
                                                      _mm256_loadu_si256((const __m256i *)y[ib + 1].qs)), one);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(tk_fp16_table[y[ib].d] * tk_fp16_table[x[ib].d]),
                               _mm256_cvtepi32_ps(p1), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_set1_ps(tk_fp16_table[y[ib + 1].d] * tk_fp16_table[x[ib + 1].d]),
                               _mm256_cvtepi32_ps(p2), acc2);
    }
    float sumf = hsum8(_mm256_add_ps(acc1, acc2));
    for (; ib < nb; ++ib) {
        int sumi = 0;
        for (int j = 0; j < 16; ++j) {
            sumi += y[ib].qs[j] * tk_iq4nl_values[x[ib].qs[j] & 0xF];
            sumi += y[ib].qs[j + 16] * tk_iq4nl_values[x[ib].qs[j] >> 4];
        }
        sumf += tk_fp16_table[y[ib].d] * tk_fp16_table[x[ib].d] * sumi;
    }
    *s = sumf;
}

AVX2 void tk_vec_dot_iq4_xs_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq4_xs *x = vx;
    const block_q8_K *y = vy;
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tk_iq4nl_values));
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint8_t *qs = x[i].qs;
        const int8_t *q8 = y[i].qs;
        unsigned sh = x[i].scales_h;
        __m256i sum1 = _mm256_setzero_si256(), sum2 = _mm256_setzero_si256();
        for (int ib = 0; ib < QK_K / 32; ib += 2, qs += 32, q8 += 64, sh >>= 4) {
            /* the sign trick of ggml's kernel (Q8_K quants made from floats stay within ±127) */
            const __m256i p1 = pairs_s8(iq4_values32(qs, table), _mm256_loadu_si256((const __m256i *)q8));
            const __m256i p2 = pairs_s8(iq4_values32(qs + 16, table), _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            const int16_t ls1 = (int16_t)(((x[i].scales_l[ib / 2] & 0xF) | ((sh << 4) & 0x30)) - 32);
            const int16_t ls2 = (int16_t)(((x[i].scales_l[ib / 2] >> 4) | ((sh << 2) & 0x30)) - 32);
            sum1 = _mm256_add_epi32(_mm256_madd_epi16(p1, _mm256_set1_epi16(ls1)), sum1);
            sum2 = _mm256_add_epi32(_mm256_madd_epi16(p2, _mm256_set1_epi16(ls2)), sum2);
        }
        sumf = fmaf(tk_fp16_table[x[i].d] * y[i].d, (float)hsum8_epi32(_mm256_add_epi32(sum1, sum2)), sumf);
    }
    *s = sumf;
}

#endif
