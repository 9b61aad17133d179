/* AVX2 dot products of TQ1_0 / TQ2_0 weights (quants_ternary.c) with Q8_K activations. The trits (0..2) meet the
   activations by unsigned x signed byte products; Σ(t - 1)·y is Σt·y minus the activation block sums. Lane k of the
   integer sums gathers the elements e with (e mod 32) / 4 == k, as in ggml's AVX2 kernels, and each super-block adds
   d_x·d_y times its lanes to the accumulator in one FMA (ggml's multiply-then-add, as its build contracts it), so the
   results are ggml's bit for bit. */
#include <string.h>

#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

/* per byte b of v: the trit ((b · m mod 256) · 3) >> 8, with m taken per 16-bit lane from mlo for the bytes that
   _mm256_unpacklo_epi8 widens (bytes 0..7 of each 128-bit half) and from mhi for the others */
static inline AVX2 __m256i trits(__m256i v, __m256i mlo, __m256i mhi) {
    const __m256i zero = _mm256_setzero_si256(), low = _mm256_set1_epi16(0xFF), three = _mm256_set1_epi16(3);
    __m256i lo = _mm256_and_si256(_mm256_mullo_epi16(_mm256_unpacklo_epi8(v, zero), mlo), low);
    __m256i hi = _mm256_and_si256(_mm256_mullo_epi16(_mm256_unpackhi_epi8(v, zero), mhi), low);
    lo = _mm256_srli_epi16(_mm256_mullo_epi16(lo, three), 8);
    hi = _mm256_srli_epi16(_mm256_mullo_epi16(hi, three), 8);
    return _mm256_packus_epi16(lo, hi); /* back in byte order within each half */
}

/* d_x·d_y · (lanes of Σt·y − bsums) added to acc; s16 holds the 16-bit lane sums of Σt·y */
static inline AVX2 __m256 finish(__m256i s16, const block_q8_K *y, tk_half dx, __m256 acc) {
    s16 = _mm256_sub_epi16(s16, _mm256_loadu_si256((const __m256i *)y->bsums));
    const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    const float d = y->d * tk_fp16_table[dx];
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_set1_ps(d), acc);
}

static inline AVX2 __m256i yload(const block_q8_K *y, int at) {
    return _mm256_loadu_si256((const __m256i *)(y->qs + at));
}

AVX2 void tk_vec_dot_tq1_0_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_tq1_0 *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    __m256i pow3[5];
    for (int k = 0, p = 1; k < 5; ++k, p *= 3) pow3[k] = _mm256_set1_epi16((short)p);
    /* two powers per register: p for the lower 128-bit half, q for the upper */
#define HALVES(p, q) _mm256_setr_epi16(p, p, p, p, p, p, p, p, q, q, q, q, q, q, q, q)
    const __m256i p01 = HALVES(1, 3), p23 = HALVES(9, 27);
#undef HALVES
    /* the last register: trit 4 of qs[32..47] below, the qh trits above (byte 4k + j: qh[j] times 3^k) */
    const __m256i p4lo = _mm256_setr_epi16(81, 81, 81, 81, 81, 81, 81, 81, 1, 1, 1, 1, 3, 3, 3, 3);
    const __m256i p4hi = _mm256_setr_epi16(81, 81, 81, 81, 81, 81, 81, 81, 9, 9, 9, 9, 27, 27, 27, 27);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)x[i].qs);
        __m256i sum = _mm256_setzero_si256();
        for (int k = 0; k < 5; ++k)
            sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(trits(q0, pow3[k], pow3[k]), yload(&y[i], 32 * k)));
        const __m128i q1 = _mm_loadu_si128((const __m128i *)(x[i].qs + 32));
        const __m256i q11 = _mm256_inserti128_si256(_mm256_castsi128_si256(q1), q1, 1);
        sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(trits(q11, p01, p01), yload(&y[i], 160)));
        sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(trits(q11, p23, p23), yload(&y[i], 192)));
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        const __m256i q2 = _mm256_inserti128_si256(_mm256_castsi128_si256(q1), _mm_set1_epi32((int)qh), 1);
        sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(trits(q2, p4lo, p4hi), yload(&y[i], 224)));
        acc = finish(sum, &y[i], x[i].d, acc);
    }
    *s = hsum8(acc);
}

AVX2 void tk_vec_dot_tq2_0_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_tq2_0 *x = vx;
    const block_q8_K *y = vy;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        __m256i sum = _mm256_setzero_si256();
        for (int c = 0; c < 2; ++c) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
            for (int k = 0; k < 4; ++k) {
                const __m256i t = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), m3);
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(t, yload(&y[i], 128 * c + 32 * k)));
            }
        }
        acc = finish(sum, &y[i], x[i].d, acc);
    }
    *s = hsum8(acc);
}

#endif
