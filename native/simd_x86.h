/* What the x86 kernel files share: the AVX2 target attribute their functions carry (chosen at run time, the build
   itself stays plain x86-64) and the 8-lane horizontal sum in ggml's order. Included inside their x86 guard. */
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

#endif
