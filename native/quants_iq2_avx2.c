/* AVX2 dot products of the IQ2_XXS, IQ2_XS and IQ2_S weights (quants_iq2.c) with Q8_K activations, in the float order
   of ggml's AVX2 kernels (ggml-cpu/arch/x86/quants.c): per super-block, eight int32 lanes (lane l: bytes 4l..4l+3 of
   every 32 weights, times their 4-bit scale 2s+1) from grid bytes × sign-applied activations, one fused
   multiply-add by d into eight float lanes, and 0.125 × their sum at the end. The integer sums are exact, so any
   order of them gives ggml's bits. */
#include <string.h>

#include "quants_iq2.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

/* The three kernels add the even and the odd groups of 32 of a super-block into two lane-sum chains, each group's
   scales from one register made per super-block (iq_scales16) where the group has two: a group's integers are
   ggml's, only their adds are ordered otherwise (exact). */

/* the 16 pair sums (int16) of 32 weights (four grid points g0..g3; signs as ±1 bytes) with 32 activations */
static inline AVX2 __m256i pairs32(uint64_t g0, uint64_t g1, uint64_t g2, uint64_t g3, __m256i sign, const int8_t *q8) {
    const __m256i grid = _mm256_set_epi64x((long long)g3, (long long)g2, (long long)g1, (long long)g0);
    return _mm256_maddubs_epi16(grid, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q8), sign));
}

/* the signs of IQ2_XXS/IQ2_XS: four 7-bit table indices (the eighth bit the parity) as ±1 bytes */
#define SIGNS7(v) tk_iq2_sign_bytes[tk_iq2_ksigns[(v) & 127]]
static inline AVX2 __m256i signs7x4(unsigned a, unsigned b, unsigned c, unsigned d) {
    return _mm256_set_epi64x((long long)SIGNS7(d), (long long)SIGNS7(c), (long long)SIGNS7(b), (long long)SIGNS7(a));
}

/* the 16 four-bit scales of a super-block (two per byte: the first 16 weights of group ib, then the last 16) as
   int16 2s+1: the low 128 bits hold the first scale of groups 0..7, the high 128 bits the second */
static inline AVX2 __m256i iq_scales16(const uint8_t scales[8]) {
    uint64_t sc8;
    memcpy(&sc8, scales, 8);
    const __m128i nib = _mm_and_si128(_mm_set_epi64x((long long)(sc8 >> 4), (long long)sc8), _mm_set1_epi8(0xf));
    return _mm256_cvtepi8_epi16(_mm_add_epi8(_mm_add_epi8(nib, nib), _mm_set1_epi8(1)));
}

/* group ib's scales for the madd of its pair sums: its first scale in the 8 low int16 lanes, its second in the 8 high */
static inline AVX2 __m256i iq_scale_pair(__m256i sc16, int ib) {
    return _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 * (2 * ib + 1) + 2 * ib)));
}

/* the end of a super-block: its lane sums times d_x·d_y into the float lanes */
static inline AVX2 __m256 iq2_step(__m256 acc, __m256i sum0, __m256i sum1, tk_half dx, float dy) {
    return _mm256_fmadd_ps(_mm256_set1_ps(tk_fp16_table[dx] * dy), _mm256_cvtepi32_ps(_mm256_add_epi32(sum0, sum1)), acc);
}

AVX2 void tk_vec_dot_iq2_xxs_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq2_xxs *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        __m256i sum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int ib = 0; ib < QK_K / 32; ++ib, q8 += 32) {
            uint32_t aux[2];
            memcpy(aux, x[i].qs + 4 * ib, 8);
            const __m256i p = pairs32(tk_iq2xxs_grid[aux[0] & 255], tk_iq2xxs_grid[(aux[0] >> 8) & 255],
                                      tk_iq2xxs_grid[(aux[0] >> 16) & 255], tk_iq2xxs_grid[aux[0] >> 24],
                                      signs7x4(aux[1], aux[1] >> 7, aux[1] >> 14, aux[1] >> 21), q8);
            sum[ib & 1] = _mm256_add_epi32(sum[ib & 1], _mm256_madd_epi16(p, _mm256_set1_epi16((short)(2 * (aux[1] >> 28) + 1))));
        }
        acc = iq2_step(acc, sum[0], sum[1], x[i].d, y[i].d);
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
        const __m256i sc16 = iq_scales16(x[i].scales);
        __m256i sum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int ib = 0; ib < QK_K / 32; ++ib, q8 += 32, q2 += 4) {
            const __m256i p = pairs32(tk_iq2xs_grid[q2[0] & 511], tk_iq2xs_grid[q2[1] & 511],
                                      tk_iq2xs_grid[q2[2] & 511], tk_iq2xs_grid[q2[3] & 511],
                                      signs7x4(q2[0] >> 9, q2[1] >> 9, q2[2] >> 9, q2[3] >> 9), q8);
            sum[ib & 1] = _mm256_add_epi32(sum[ib & 1], _mm256_madd_epi16(p, iq_scale_pair(sc16, ib)));
        }
        acc = iq2_step(acc, sum[0], sum[1], x[i].d, y[i].d);
    }
    *s = 0.125f * hsum8(acc);
}

/* IQ2_S: 10-bit grid indices (qs, two bits of qh above), the signs as bits (two groups' masks from one broadcast) */
#define IQ2S_GRID(j, h) tk_iq2s_grid[qs[j] | (((h) << (8 - 2 * ((j) & 3))) & 0x300)]
AVX2 void tk_vec_dot_iq2_s_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq2_s *x = vx;
    const block_q8_K *y = vy;
    const __m256i one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        const uint8_t *qs = x[i].qs, *signs = x[i].qs + QK_K / 8;
        const __m256i sc16 = iq_scales16(x[i].scales);
        __m256i sum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int ib = 0; ib < QK_K / 32; ib += 2, q8 += 64, qs += 8, signs += 8) {
            const unsigned h0 = x[i].qh[ib], h1 = x[i].qh[ib + 1];
            uint64_t sg;
            memcpy(&sg, signs, 8);
            __m256i neg[2];
            bits64_masks(sg, neg);
            const __m256i p0 = pairs32(IQ2S_GRID(0, h0), IQ2S_GRID(1, h0), IQ2S_GRID(2, h0), IQ2S_GRID(3, h0),
                                       _mm256_or_si256(neg[0], one), q8);
            const __m256i p1 = pairs32(IQ2S_GRID(4, h1), IQ2S_GRID(5, h1), IQ2S_GRID(6, h1), IQ2S_GRID(7, h1),
                                       _mm256_or_si256(neg[1], one), q8 + 32);
            sum[0] = _mm256_add_epi32(sum[0], _mm256_madd_epi16(p0, iq_scale_pair(sc16, ib)));
            sum[1] = _mm256_add_epi32(sum[1], _mm256_madd_epi16(p1, iq_scale_pair(sc16, ib + 1)));
        }
        acc = iq2_step(acc, sum[0], sum[1], x[i].d, y[i].d);
    }
    *s = 0.125f * hsum8(acc);
}
#undef IQ2S_GRID

#endif
