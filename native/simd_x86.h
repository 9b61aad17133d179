/* What the x86 kernel files share: the AVX2 target attribute their functions carry (chosen at run time, the build
   itself stays plain x86-64), the 8-lane horizontal sum in ggml's order, its signed byte products, bit masks and the
   grid lookups of the IQ types. Included inside their x86 guard. */
#ifndef TOOLKIT_SIMD_X86_H
#define TOOLKIT_SIMD_X86_H

#include <immintrin.h>
#include <stdint.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

static inline AVX2 float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the sum of 8 int32 lanes (exact integers: any order) */
static inline AVX2 int32_t hsum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/* 16 bytes of packed nibbles -> 32 bytes: the low nibbles (elements 0..15), then the high ones (16..31): the bytes
   broadcast to both halves, the high half shifted by 4 (vpsrlvd), masked */
static inline AVX2 __m256i nibbles32(const uint8_t *q) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
    return _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* the 32 IQ4_NL values of 16 bytes of indices (nibbles32's order); table: the 16 values in both halves */
static inline AVX2 __m256i iq4_values32(const uint8_t *qs, __m256i table) {
    return _mm256_shuffle_epi8(table, nibbles32(qs));
}

/* signed x · signed y as 16 int16 sums of adjacent products (ggml's mul_add_epi8: the sign of x moved onto y; exact
   when x is never -128 and no pair sum overflows) */
static inline AVX2 __m256i pairs_s8(__m256i x, __m256i y) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* the 32 bits at byte 4h of a broadcast 64-bit word b (bit k: byte k) as 32 bytes, 0xFF where the bit is set: each
   byte spread over 8 bytes, one bit kept per byte and compared */
static inline AVX2 __m256i bits32_mask_at(__m256i b, int h) {
    const __m256i spread = _mm256_add_epi8(_mm256_set1_epi8((char)(4 * h)),
                                           _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                                            2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(b, spread), bit), bit);
}

static inline AVX2 __m256i bits32_mask(uint32_t bits) { return bits32_mask_at(_mm256_set1_epi32((int)bits), 0); }

/* the masks of two groups of 32 bits (the low half of bits, then the high half) from one broadcast */
static inline AVX2 void bits64_masks(uint64_t bits, __m256i m[2]) {
    const __m256i b = _mm256_set1_epi64x((long long)bits);
    m[0] = bits32_mask_at(b, 0);
    m[1] = bits32_mask_at(b, 1);
}

/* the 32 bytes of v, negated where bit k of bits is set (the IQ types' sign bits) */
static inline AVX2 __m256i negate_bits32(__m256i v, uint32_t bits) {
    const __m256i neg = bits32_mask(bits);
    return _mm256_sub_epi8(_mm256_xor_si256(neg, v), neg);
}

/* the 8 grid entries (4 values each) of 8 indices */
static inline AVX2 __m256i grid8(const uint32_t *grid, const int idx[8]) {
    return _mm256_set_epi32((int)grid[idx[7]], (int)grid[idx[6]], (int)grid[idx[5]], (int)grid[idx[4]],
                            (int)grid[idx[3]], (int)grid[idx[2]], (int)grid[idx[1]], (int)grid[idx[0]]);
}

/* the 8 grid entries of the 9-bit indices qs[j] | (bit j of qh) << 8 (IQ3_S), the indices made in lanes and gathered */
static inline AVX2 __m256i grid8_9bit(const uint32_t *grid, const uint8_t *qs, unsigned qh) {
    const __m256i low = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i high = _mm256_and_si256(
        _mm256_sllv_epi32(_mm256_set1_epi32((int)qh), _mm256_setr_epi32(8, 7, 6, 5, 4, 3, 2, 1)), _mm256_set1_epi32(256));
    return _mm256_i32gather_epi32((const int *)grid, _mm256_or_si256(low, high), 4);
}

#endif
