/* The ternary types TQ1_0 (1.6875 bits per weight: five trits per byte) and TQ2_0 (2.0625: four 2-bit trits per
   byte), super-blocks of 256 with one fp16 scale, the absolute maximum; weights are -1, 0 or 1 times it.
   Quantizers bit-exact with ggml's quantize_row_tq1_0_ref / tq2_0_ref (what ggml_quantize_chunk runs; they take no
   importance matrix), dequantizers, and the scalar dot products with Q8_K activations in ggml's generic order. */
#include <math.h>
#include <string.h>

#include "quants.h"

/* 0, 1, 2 for -1, 0, 1: x/amax rounded half away from zero */
static inline int trit(float x, float id) { return (int)lroundf(x * id) + 1; }

/* n trits of x[0], x[stride], ... (the first the most significant), then zero trits up to five, as the byte
   ceil(value · 256 / 243): trit k is then the top two bits' worth ((byte · 3^k mod 256) · 3 >> 8). */
static inline uint8_t pack_trits(const float *x, int stride, int n, float id) {
    unsigned q = 0;
    for (int k = 0; k < 5; ++k) q = q * 3 + (unsigned)(k < n ? trit(x[k * stride], id) : 0);
    return (uint8_t)((q * 256 + 242) / 243);
}

static inline int unpack_trit(uint8_t byte, int k) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t q = (uint8_t)(byte * pow3[k]);
    return (q * 3) >> 8;
}

static inline float absmax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
    return amax;
}

/* Element order: qs[0..31] hold elements m + 32k (k = 0..4), qs[32..47] elements 160 + m + 16k, qh[0..3] elements
   240 + j + 4k (k = 0..3, a fifth trit 0). */
void quantize_row_tq1_0(const float *x, void *vy, int64_t k) {
    block_tq1_0 *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i, x += QK_K) {
        const float d = absmax(x, QK_K);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tk_fp32_to_fp16(d);
        for (int m = 0; m < 32; ++m) y[i].qs[m] = pack_trits(x + m, 32, 5, id);
        for (int m = 0; m < 16; ++m) y[i].qs[32 + m] = pack_trits(x + 160 + m, 16, 5, id);
        for (int j = 0; j < 4; ++j) y[i].qh[j] = pack_trits(x + 240 + j, 4, 4, id);
    }
}

/* Element order: qs[32c + m] holds elements 128c + m + 32k in bits 2k..2k+1 (k = 0..3) */
void quantize_row_tq2_0(const float *x, void *vy, int64_t k) {
    block_tq2_0 *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i, x += QK_K) {
        const float d = absmax(x, QK_K);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tk_fp32_to_fp16(d);
        for (int c = 0; c < 2; ++c) {
            for (int m = 0; m < 32; ++m) {
                unsigned q = 0;
                for (int t = 0; t < 4; ++t) q += (unsigned)(trit(x[128 * c + m + 32 * t], id) & 3) << (2 * t);
                y[i].qs[32 * c + m] = (uint8_t)q;
            }
        }
    }
}

/* the 256 trits (0..2) of a TQ1_0 super-block, in element order */
static void tq1_0_trits(const block_tq1_0 *x, uint8_t t[QK_K]) {
    for (int k = 0; k < 5; ++k)
        for (int m = 0; m < 32; ++m) t[32 * k + m] = (uint8_t)unpack_trit(x->qs[m], k);
    for (int k = 0; k < 5; ++k)
        for (int m = 0; m < 16; ++m) t[160 + 16 * k + m] = (uint8_t)unpack_trit(x->qs[32 + m], k);
    for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 4; ++j) t[240 + 4 * k + j] = (uint8_t)unpack_trit(x->qh[j], k);
}

static inline int tq2_0_trit(const block_tq2_0 *x, int e) {
    return (x->qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
}

void dequantize_row_tq1_0(const void *vx, float *y, int64_t k) {
    const block_tq1_0 *x = vx;
    uint8_t t[QK_K];
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        tq1_0_trits(&x[i], t);
        for (int e = 0; e < QK_K; ++e) *y++ = (float)(t[e] - 1) * d;
    }
}

void dequantize_row_tq2_0(const void *vx, float *y, int64_t k) {
    const block_tq2_0 *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int e = 0; e < QK_K; ++e) *y++ = (float)(tq2_0_trit(&x[i], e) - 1) * d;
    }
}

void tk_vec_dot_tq1_0_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_tq1_0 *x = vx;
    const block_q8_K *y = vy;
    uint8_t t[QK_K];
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        tq1_0_trits(&x[i], t);
        int sum = 0;
        for (int e = 0; e < QK_K; ++e) sum += (t[e] - 1) * y[i].qs[e];
        sumf += (float)sum * (tk_fp16_to_fp32(x[i].d) * y[i].d);
    }
    *s = sumf;
}

void tk_vec_dot_tq2_0_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_tq2_0 *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        int32_t sumi = 0;
        for (int e = 0; e < QK_K; ++e) sumi += y[i].qs[e] * (tq2_0_trit(&x[i], e) - 1);
        sumf += (float)sumi * (y[i].d * tk_fp16_to_fp32(x[i].d));
    }
    *s = sumf;
}
