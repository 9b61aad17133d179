/* What the x86 kernel files share: the AVX2 target attribute their functions carry (chosen at run time, the build
   itself stays plain x86-64), the 8-lane horizontal sum in ggml's order and its signed byte products. Included
   inside their x86 guard. */
#ifndef TOOLKIT_SIMD_X86_H
#define TOOLKIT_SIMD_X86_H

#include <immintrin.h>

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

/* signed x · signed y as 16 int16 sums of adjacent products (ggml's mul_add_epi8: the sign of x moved onto y; exact
   when x is never -128 and no pair sum overflows) */
static inline AVX2 __m256i pairs_s8(__m256i x, __m256i y) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

#endif
