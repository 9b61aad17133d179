/* Legacy block types (32 elements per block): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and the activation type Q8_1.
   Reference algorithms of ggml, bit for bit: scales computed in fp32, only the stored scale rounded to fp16, the
   quants produced from the fp32 scale; truncating casts as in the reference (so out-of-range values, which only
   occur for degenerate scales, land where ggml's land). Built without FP contraction, as ggml-base is. */
#include <float.h>
#include <math.h>
#include <string.h>
#include "quants.h"

/* The element of largest magnitude, with its sign; the first one wins ties. */
static float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void min_max(const float *x, int n, float *min, float *max) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *min = lo;
    *max = hi;
}

static float absmax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        amax = amax > a ? amax : a;
    }
    return amax;
}

static inline float inverse_or_zero(float d) { return d ? 1.0f / d : 0.0f; }

/* ---- quantize ---- */

void quantize_row_q4_0_ref(const float *x, void *vy, int64_t k) {
    block_q4_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -8;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        for (int j = 0; j < QK / 2; j++) {
            int8_t lo = (int8_t)(x[j] * id + 8.5f), hi = (int8_t)(x[j + QK / 2] * id + 8.5f);
            uint8_t qlo = lo < 15 ? (uint8_t)lo : 15, qhi = hi < 15 ? (uint8_t)hi : 15;
            y[i].qs[j] = (uint8_t)(qlo | (qhi << 4));
        }
    }
}

void quantize_row_q4_1_ref(const float *x, void *vy, int64_t k) {
    block_q4_1 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        float min, max;
        min_max(x, QK, &min, &max);
        const float d = (max - min) / 15;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        y[i].m = tk_fp32_to_fp16(min);
        for (int j = 0; j < QK / 2; j++) {
            int8_t lo = (int8_t)((x[j] - min) * id + 0.5f), hi = (int8_t)((x[j + QK / 2] - min) * id + 0.5f);
            uint8_t qlo = lo < 15 ? (uint8_t)lo : 15, qhi = hi < 15 ? (uint8_t)hi : 15;
            y[i].qs[j] = (uint8_t)(qlo | (qhi << 4));
        }
    }
}

/* Q5: low nibbles as Q4, bit 4 of element j in bit j of the 32-bit qh word. */
void pack_q5(const uint8_t q[QK], uint8_t qs[QK / 2], uint8_t qh_bytes[4]) {
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4));
        qh |= (uint32_t)((q[j] & 0x10u) >> 4) << j;
        qh |= (uint32_t)((q[j + QK / 2] & 0x10u) >> 4) << (j + QK / 2);
    }
    memcpy(qh_bytes, &qh, 4);
}

void quantize_row_q5_0_ref(const float *x, void *vy, int64_t k) {
    block_q5_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -16;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        uint8_t q[QK];
        for (int j = 0; j < QK; j++) {
            int8_t v = (int8_t)(x[j] * id + 16.5f);
            q[j] = v < 31 ? (uint8_t)v : 31;
        }
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

void quantize_row_q5_1_ref(const float *x, void *vy, int64_t k) {
    block_q5_1 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        float min, max;
        min_max(x, QK, &min, &max);
        const float d = (max - min) / 31;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        y[i].m = tk_fp32_to_fp16(min);
        uint8_t q[QK];
        for (int j = 0; j < QK; j++) q[j] = (uint8_t)((x[j] - min) * id + 0.5f);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

void quantize_row_q8_0_ref(const float *x, void *vy, int64_t k) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void quantize_row_q8_1_ref(const float *x, void *vy, int64_t k) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = tk_fp32_to_fp16((float)sum * d);
    }
}

/* ---- dequantize ---- */

void dequantize_row_q4_0(const void *vx, float *y, int64_t k) {
    const block_q4_0 *x = vx;
    for (int64_t i = 0; i < k / QK; i++, y += QK) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK / 2] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void dequantize_row_q4_1(const void *vx, float *y, int64_t k) {
    const block_q4_1 *x = vx;
    for (int64_t i = 0; i < k / QK; i++, y += QK) {
        const float d = tk_fp16_to_fp32(x[i].d), m = tk_fp16_to_fp32(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)(x[i].qs[j] & 0x0F) * d + m;
            y[j + QK / 2] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

static void unpack_q5(const uint8_t qs[QK / 2], const uint8_t qh_bytes[4], int q[QK]) {
    uint32_t qh;
    memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < QK / 2; j++) {
        q[j] = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        q[j + QK / 2] = (qs[j] >> 4) | (int)(((qh >> (j + QK / 2)) & 1u) << 4);
    }
}

void dequantize_row_q5_0(const void *vx, float *y, int64_t k) {
    const block_q5_0 *x = vx;
    for (int64_t i = 0; i < k / QK; i++, y += QK) {
        const float d = tk_fp16_to_fp32(x[i].d);
        int q[QK];
        unpack_q5(x[i].qs, x[i].qh, q);
        for (int j = 0; j < QK; j++) y[j] = (float)(q[j] - 16) * d;
    }
}

void dequantize_row_q5_1(const void *vx, float *y, int64_t k) {
    const block_q5_1 *x = vx;
    for (int64_t i = 0; i < k / QK; i++, y += QK) {
        const float d = tk_fp16_to_fp32(x[i].d), m = tk_fp16_to_fp32(x[i].m);
        int q[QK];
        unpack_q5(x[i].qs, x[i].qh, q);
        for (int j = 0; j < QK; j++) y[j] = (float)q[j] * d + m;
    }
}

void dequantize_row_q8_0(const void *vx, float *y, int64_t k) {
    const block_q8_0 *x = vx;
    for (int64_t i = 0; i < k / QK; i++, y += QK) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = (float)x[i].qs[j] * d;
    }
}

void dequantize_row_q8_1(const void *vx, float *y, int64_t k) {
    const block_q8_1 *x = vx;
    for (int64_t i = 0; i < k / QK; i++, y += QK) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = (float)x[i].qs[j] * d;
    }
}
