/* AVX2 dot products of the IQ2_XXS, IQ2_XS and IQ2_S weights (quants_iq2.c) with Q8_K activations, in the float order
   of ggml's AVX2 kernels (ggml-cpu/arch/x86/quants.c): per super-block, eight int32 lanes (lane l: bytes 4l..4l+3 of
   every 32 weights, times their 4-bit scale 2s+1) from grid bytes × sign-applied activations, one fused
   multiply-add by d into eight float lanes, and 0.125 × their sum at the end. The integer sums are exact, so any
   order of them gives ggml's bits. */
#include <string.h>

#include "quants_iq2.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

/* 8 int32 lanes of 32 weights (four grid points g0..g3, signs as ±1 bytes) against 32 activations, the first 16
   weights scaled by ls1 and the last 16 by ls2 */
static inline AVX2 __m256i dot32_signed(uint64_t g0, uint64_t g1, uint64_t g2, uint64_t g3, __m256i sign,
                                        const int8_t *q8, int ls1, int ls2) {
    const __m256i grid = _mm256_set_epi64x((long long)g3, (long long)g2, (long long)g1, (long long)g0);
    const __m256i q8s = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q8), sign);
    const __m256i scale = _mm256_set_m128i(_mm_set1_epi16((short)ls2), _mm_set1_epi16((short)ls1));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q8s), scale);
}

/* dot32_signed with the signs as four table words s0..s3 */
static inline AVX2 __m256i dot32(uint64_t g0, uint64_t g1, uint64_t g2, uint64_t g3, uint64_t s0, uint64_t s1,
                                 uint64_t s2, uint64_t s3, const int8_t *q8, int ls1, int ls2) {
    const __m256i sign = _mm256_set_epi64x((long long)s3, (long long)s2, (long long)s1, (long long)s0);
    return dot32_signed(g0, g1, g2, g3, sign, q8, ls1, ls2);
}

/* 32 sign bits (bit k set: weight k negative) as ±1 bytes, in registers (four lookups of tk_iq2_sign_bytes cost
   IQ2_S's kernel its speed) */
static inline AVX2 __m256i sign_bits32(uint32_t bits) {
    return _mm256_or_si256(bits32_mask(bits), _mm256_set1_epi8(1));
}

#define SIGNS7(v) tk_iq2_sign_bytes[tk_iq2_ksigns[(v) & 127]]

AVX2 void tk_vec_dot_iq2_xxs_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq2_xxs *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        __m256i sum = _mm256_setzero_si256();
        for (int ib = 0; ib < QK_K / 32; ++ib, q8 += 32) {
            uint32_t aux[2];
            memcpy(aux, x[i].qs + 4 * ib, 8);
            const int ls = (int)(2 * (aux[1] >> 28) + 1);
            sum = _mm256_add_epi32(sum, dot32(tk_iq2xxs_grid[aux[0] & 255], tk_iq2xxs_grid[(aux[0] >> 8) & 255],
                                              tk_iq2xxs_grid[(aux[0] >> 16) & 255], tk_iq2xxs_grid[aux[0] >> 24],
                                              SIGNS7(aux[1]), SIGNS7(aux[1] >> 7), SIGNS7(aux[1] >> 14),
                                              SIGNS7(aux[1] >> 21), q8, ls, ls));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(tk_fp16_table[x[i].d] * y[i].d), _mm256_cvtepi32_ps(sum), acc);
    }
    *s = 0.125f * hsum8(acc);
}

AVX2 void tk_vec_dot_iq2_xs_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq2_xs *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        const uint16_t *q2 = x[i].qs;
        __m256i sum = _mm256_setzero_si256();
        for (int ib = 0; ib < QK_K / 32; ++ib, q8 += 32, q2 += 4) {
            const uint8_t sc = x[i].scales[ib];
            sum = _mm256_add_epi32(sum, dot32(tk_iq2xs_grid[q2[0] & 511], tk_iq2xs_grid[q2[1] & 511],
                                              tk_iq2xs_grid[q2[2] & 511], tk_iq2xs_grid[q2[3] & 511],
                                              SIGNS7(q2[0] >> 9), SIGNS7(q2[1] >> 9), SIGNS7(q2[2] >> 9),
                                              SIGNS7(q2[3] >> 9), q8, 2 * (sc & 0xf) + 1, 2 * (sc >> 4) + 1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(tk_fp16_table[x[i].d] * y[i].d), _mm256_cvtepi32_ps(sum), acc);
    }
    *s = 0.125f * hsum8(acc);
}

AVX2 void tk_vec_dot_iq2_s_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq2_s *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        const uint8_t *qs = x[i].qs, *signs = x[i].qs + QK_K / 8;
        __m256i sum = _mm256_setzero_si256();
        for (int ib = 0; ib < QK_K / 32; ++ib, q8 += 32, qs += 4, signs += 4) {
            const unsigned h = x[i].qh[ib];
            const uint8_t sc = x[i].scales[ib];
            uint32_t sign;
            memcpy(&sign, signs, 4);
            sum = _mm256_add_epi32(
                sum, dot32_signed(tk_iq2s_grid[qs[0] | ((h << 8) & 0x300)], tk_iq2s_grid[qs[1] | ((h << 6) & 0x300)],
                                  tk_iq2s_grid[qs[2] | ((h << 4) & 0x300)], tk_iq2s_grid[qs[3] | ((h << 2) & 0x300)],
                                  sign_bits32(sign), q8, 2 * (sc & 0xf) + 1, 2 * (sc >> 4) + 1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(tk_fp16_table[x[i].d] * y[i].d), _mm256_cvtepi32_ps(sum), acc);
    }
    *s = 0.125f * hsum8(acc);
}

#endif
