/* AVX2 versions of the legacy quantizers. They produce exactly the reference's bytes (quants_legacy.c): every element
   goes through the same float operations in the same order (multiply, then add; no FMA), maxima and minima are exact,
   ties resolve to the first element as the reference's scan does (so even the sign of a zero matches), and the C
   truncating casts are emulated by keeping the low byte of the 32-bit truncation, as the reference's code does. */
#include <math.h>
#include <string.h>
#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,f16c")))

/* The 32 elements of a block as 4 vectors */
struct blk { __m256 v[4]; };

static inline AVX2 struct blk load_block(const float *x) {
    struct blk b = {{_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)}};
    return b;
}

static inline AVX2 float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static inline AVX2 float hmin(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* Index of the first element equal (==) to target among the 32 (target is known to occur). */
static inline AVX2 int first_equal(const __m256 v[4], __m256 target) {
    uint32_t mask = 0;
    for (int i = 0; i < 4; i++)
        mask |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v[i], target, _CMP_EQ_OQ)) << (8 * i);
    return __builtin_ctz(mask);
}

static inline AVX2 __m256 vabs(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* The signed element of largest magnitude, first one on ties (the reference's strict-< scan from amax = 0). */
static inline AVX2 float signed_absmax(const struct blk *b, const float *x) {
    __m256 m = _mm256_max_ps(_mm256_max_ps(vabs(b->v[0]), vabs(b->v[1])), _mm256_max_ps(vabs(b->v[2]), vabs(b->v[3])));
    float amax = hmax(m);
    if (amax == 0.0f) return 0.0f;
    __m256 a[4] = {vabs(b->v[0]), vabs(b->v[1]), vabs(b->v[2]), vabs(b->v[3])};
    return x[first_equal(a, _mm256_set1_ps(amax))];
}

/* min and max as the reference's scan finds them: the first element holding each extreme value. */
static inline AVX2 void min_max(const struct blk *b, const float *x, float *min, float *max) {
    __m256 lo = _mm256_min_ps(_mm256_min_ps(b->v[0], b->v[1]), _mm256_min_ps(b->v[2], b->v[3]));
    __m256 hi = _mm256_max_ps(_mm256_max_ps(b->v[0], b->v[1]), _mm256_max_ps(b->v[2], b->v[3]));
    *min = x[first_equal(b->v, _mm256_set1_ps(hmin(lo)))];
    *max = x[first_equal(b->v, _mm256_set1_ps(hmax(hi)))];
}

/* (int8_t)(float) as the reference compiles it: 32-bit truncation, then the low byte, sign-extended. */
static inline AVX2 __m256i trunc_to_int8(__m256 v) {
    return _mm256_srai_epi32(_mm256_slli_epi32(_mm256_cvttps_epi32(v), 24), 24);
}

/* The low byte of each 32-bit lane of a, b, c, d, in order: 32 bytes. */
static inline AVX2 void store_low_bytes(uint8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d, int n_vectors) {
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i v[4] = {a, b, c, d};
    for (int i = 0; i < n_vectors; i++) {
        __m256i s = _mm256_shuffle_epi8(v[i], pick);
        uint32_t lo = (uint32_t)_mm256_extract_epi32(s, 0), hi = (uint32_t)_mm256_extract_epi32(s, 4);
        memcpy(dst + 8 * i, &lo, 4);
        memcpy(dst + 8 * i + 4, &hi, 4);
    }
}

/* qs[j] = (q[j] & mask) | (q[j+16] & mask) << 4 for q given as 4 vectors of 32-bit lanes: Q4 packs the whole low
   byte (mask 0xFF, as its reference does), Q5 the low nibble (mask 0x0F). */
static inline AVX2 void store_nibbles(uint8_t qs[16], const __m256i q[4], int mask) {
    const __m256i ff = _mm256_set1_epi32(mask);
    __m256i b0 = _mm256_or_si256(_mm256_and_si256(q[0], ff), _mm256_slli_epi32(_mm256_and_si256(q[2], ff), 4));
    __m256i b1 = _mm256_or_si256(_mm256_and_si256(q[1], ff), _mm256_slli_epi32(_mm256_and_si256(q[3], ff), 4));
    store_low_bytes(qs, b0, b1, b0, b1, 2);
}

/* bit 4 of each of the 32 quants, element j in bit j */
static inline AVX2 uint32_t high_bits(const __m256i q[4]) {
    uint32_t qh = 0;
    for (int i = 0; i < 4; i++)
        qh |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q[i], 27))) << (8 * i);
    return qh;
}

static inline float inverse_or_zero(float d) { return d ? 1.0f / d : 0.0f; }

/* q = MIN(limit, (int8_t)(x*id + offset)), as 32-bit lanes */
static inline AVX2 void symmetric_quants(const struct blk *b, float id, float offset, int limit, __m256i q[4]) {
    __m256 vid = _mm256_set1_ps(id), off = _mm256_set1_ps(offset);
    for (int i = 0; i < 4; i++)
        q[i] = _mm256_min_epi32(trunc_to_int8(_mm256_add_ps(_mm256_mul_ps(b->v[i], vid), off)),
                                _mm256_set1_epi32(limit));
}

/* (x - min)*id + 0.5, truncated to int8 */
static inline AVX2 void affine_quants(const struct blk *b, float min, float id, __m256i q[4]) {
    __m256 vmin = _mm256_set1_ps(min), vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f);
    for (int i = 0; i < 4; i++)
        q[i] = trunc_to_int8(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(b->v[i], vmin), vid), half));
}

AVX2 void quantize_row_q4_0_avx2(const float *x, void *vy, int64_t k) {
    block_q4_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        struct blk b = load_block(x);
        const float d = signed_absmax(&b, x) / -8;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        __m256i q[4];
        symmetric_quants(&b, id, 8.5f, 15, q);
        store_nibbles(y[i].qs, q, 0xFF);
    }
}

AVX2 void quantize_row_q5_0_avx2(const float *x, void *vy, int64_t k) {
    block_q5_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        struct blk b = load_block(x);
        const float d = signed_absmax(&b, x) / -16;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        __m256i q[4];
        symmetric_quants(&b, id, 16.5f, 31, q);
        store_nibbles(y[i].qs, q, 0x0F);
        uint32_t qh = high_bits(q);
        memcpy(y[i].qh, &qh, 4);
    }
}

AVX2 void quantize_row_q4_1_avx2(const float *x, void *vy, int64_t k) {
    block_q4_1 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        struct blk b = load_block(x);
        float min, max;
        min_max(&b, x, &min, &max);
        const float d = (max - min) / 15;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        y[i].m = tk_fp32_to_fp16(min);
        __m256i q[4];
        affine_quants(&b, min, id, q);
        for (int j = 0; j < 4; j++) q[j] = _mm256_min_epi32(q[j], _mm256_set1_epi32(15));
        store_nibbles(y[i].qs, q, 0xFF);
    }
}

AVX2 void quantize_row_q5_1_avx2(const float *x, void *vy, int64_t k) {
    block_q5_1 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        struct blk b = load_block(x);
        float min, max;
        min_max(&b, x, &min, &max);
        const float d = (max - min) / 31;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        y[i].m = tk_fp32_to_fp16(min);
        __m256i q[4];
        affine_quants(&b, min, id, q);  /* the reference's uint8_t cast keeps the same low byte, unclamped */
        store_nibbles(y[i].qs, q, 0x0F);
        uint32_t qh = high_bits(q);
        memcpy(y[i].qh, &qh, 4);
    }
}

/* roundf (half away from zero), then (int8_t) as the reference compiles it */
static inline AVX2 __m256i roundf_to_int8(__m256 v) {
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 frac = vabs(_mm256_sub_ps(v, t));  /* exact for |v| < 2^23 */
    __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f))));
    return trunc_to_int8(_mm256_add_ps(t, step));
}

AVX2 void quantize_row_q8_0_avx2(const float *x, void *vy, int64_t k) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        struct blk b = load_block(x);
        __m256 m = _mm256_max_ps(_mm256_max_ps(vabs(b.v[0]), vabs(b.v[1])), _mm256_max_ps(vabs(b.v[2]), vabs(b.v[3])));
        const float d = hmax(m) / 127;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        __m256 vid = _mm256_set1_ps(id);
        store_low_bytes((uint8_t *)y[i].qs, roundf_to_int8(_mm256_mul_ps(b.v[0], vid)),
                        roundf_to_int8(_mm256_mul_ps(b.v[1], vid)), roundf_to_int8(_mm256_mul_ps(b.v[2], vid)),
                        roundf_to_int8(_mm256_mul_ps(b.v[3], vid)), 4);
    }
}

#else  /* not x86: the table's SIMD slots point at the reference */
void quantize_row_q4_0_avx2(const float *x, void *y, int64_t k) { quantize_row_q4_0_ref(x, y, k); }
void quantize_row_q4_1_avx2(const float *x, void *y, int64_t k) { quantize_row_q4_1_ref(x, y, k); }
void quantize_row_q5_0_avx2(const float *x, void *y, int64_t k) { quantize_row_q5_0_ref(x, y, k); }
void quantize_row_q5_1_avx2(const float *x, void *y, int64_t k) { quantize_row_q5_1_ref(x, y, k); }
void quantize_row_q8_0_avx2(const float *x, void *y, int64_t k) { quantize_row_q8_0_ref(x, y, k); }
#endif
