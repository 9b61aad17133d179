/* ARM64 NEON versions of the legacy quantizers (ARMv8.0: every ARM64 CPU), byte for byte the reference's
   (quants_legacy.c) as the AVX2 ones are: every element goes through the same float operations in the same order
   (multiply, then add; no FMA), maxima and minima are exact and taken from the first element holding them (so even the
   sign of a zero matches), and the C casts are the instructions the compiler emits for them on ARM64 (float to int8
   and uint8: FCVTZS / FCVTZU to 32 bits, low byte kept; roundf: FCVTAS, ties away from zero). */
#include <math.h>
#include <string.h>
#include "quants.h"

#if defined(__aarch64__)
#include <arm_neon.h>

/* the 32 elements of a block as 8 vectors */
struct blk { float32x4_t v[8]; };

static inline struct blk load_block(const float *x) {
    struct blk b;
    for (int i = 0; i < 8; i++) b.v[i] = vld1q_f32(x + 4 * i);
    return b;
}

static inline float block_max_abs(const struct blk *b) {
    float32x4_t m = vabsq_f32(b->v[0]);
    for (int i = 1; i < 8; i++) m = vmaxq_f32(m, vabsq_f32(b->v[i]));
    return vmaxvq_f32(m);
}

/* index of the first of the 32 elements whose magnitude (abs) or value equals target, which occurs */
static inline int first_equal(const float *x, float target, int abs) {
    int j = 0;
    while (j < QK - 1 && (abs ? fabsf(x[j]) : x[j]) != target) j++;
    return j;
}

/* the signed element of largest magnitude, the first one on ties (the reference's strict-< scan from 0) */
static inline float signed_absmax(const struct blk *b, const float *x) {
    const float amax = block_max_abs(b);
    return amax == 0.0f ? 0.0f : x[first_equal(x, amax, 1)];
}

/* min and max as the reference's scan finds them: the first element holding each extreme value */
static inline void min_max(const struct blk *b, const float *x, float *min, float *max) {
    float32x4_t lo = b->v[0], hi = b->v[0];
    for (int i = 1; i < 8; i++) {
        lo = vminq_f32(lo, b->v[i]);
        hi = vmaxq_f32(hi, b->v[i]);
    }
    *min = x[first_equal(x, vminvq_f32(lo), 0)];
    *max = x[first_equal(x, vmaxvq_f32(hi), 0)];
}

static inline float inverse_or_zero(float d) { return d ? 1.0f / d : 0.0f; }

/* 16 int32 lanes (four vectors) to their 16 low bytes */
static inline uint8x16_t low_bytes(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b)), cd = vcombine_s16(vmovn_s32(c), vmovn_s32(d));
    return vreinterpretq_u8_s8(vcombine_s8(vmovn_s16(ab), vmovn_s16(cd)));
}

/* elements 16h .. 16h + 15 of the block: (int8_t)((v - sub) · id + add), with (x - sub) only when sub is used */
static inline int8x16_t trunc_affine(const struct blk *b, int h, int use_sub, float sub, float id, float add) {
    int32x4_t q[4];
    for (int i = 0; i < 4; i++) {
        float32x4_t v = b->v[4 * h + i];
        if (use_sub) v = vsubq_f32(v, vdupq_n_f32(sub));
        q[i] = vcvtq_s32_f32(vaddq_f32(vmulq_n_f32(v, id), vdupq_n_f32(add)));
    }
    return vreinterpretq_s8_u8(low_bytes(q[0], q[1], q[2], q[3]));
}

/* as trunc_affine, through an unsigned conversion ((uint8_t) of the float) */
static inline uint8x16_t trunc_affine_u(const struct blk *b, int h, float sub, float id, float add) {
    int32x4_t q[4];
    for (int i = 0; i < 4; i++) {
        const float32x4_t v = vaddq_f32(vmulq_n_f32(vsubq_f32(b->v[4 * h + i], vdupq_n_f32(sub)), id), vdupq_n_f32(add));
        q[i] = vreinterpretq_s32_u32(vcvtq_u32_f32(v));
    }
    return low_bytes(q[0], q[1], q[2], q[3]);
}

/* Q4: qlo | (qhi << 4) as the reference writes it, qlo unmasked (a quant the cast left negative, from a degenerate
   scale, fills the byte there too) */
static inline void store_q4(uint8_t qs[QK / 2], uint8x16_t lo, uint8x16_t hi) {
    vst1q_u8(qs, vorrq_u8(lo, vshlq_n_u8(hi, 4)));
}

/* Q5: nibbles as Q4, bit 4 of element j in bit j of the 32-bit qh word (pack_q5) */
static inline void store_q5(uint8_t qs[QK / 2], uint8_t qh[4], uint8x16_t lo, uint8x16_t hi) {
    vst1q_u8(qs, vorrq_u8(vandq_u8(lo, vdupq_n_u8(0x0F)), vshlq_n_u8(hi, 4)));
    static const uint8_t w[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t wv = vld1q_u8(w), b4 = vdupq_n_u8(0x10);
    const uint8x16_t ml = vandq_u8(vtstq_u8(lo, b4), wv), mh = vandq_u8(vtstq_u8(hi, b4), wv);
    qh[0] = vaddv_u8(vget_low_u8(ml));
    qh[1] = vaddv_u8(vget_high_u8(ml));
    qh[2] = vaddv_u8(vget_low_u8(mh));
    qh[3] = vaddv_u8(vget_high_u8(mh));
}

void quantize_row_q4_0_neon(const float *x, void *vy, int64_t k) {
    block_q4_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const struct blk b = load_block(x);
        const float d = signed_absmax(&b, x) / -8;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        const int8x16_t fifteen = vdupq_n_s8(15);
        const int8x16_t lo = vminq_s8(trunc_affine(&b, 0, 0, 0, id, 8.5f), fifteen);
        const int8x16_t hi = vminq_s8(trunc_affine(&b, 1, 0, 0, id, 8.5f), fifteen);
        store_q4(y[i].qs, vreinterpretq_u8_s8(lo), vreinterpretq_u8_s8(hi));
    }
}

void quantize_row_q4_1_neon(const float *x, void *vy, int64_t k) {
    block_q4_1 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const struct blk b = load_block(x);
        float min, max;
        min_max(&b, x, &min, &max);
        const float d = (max - min) / 15;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        y[i].m = tk_fp32_to_fp16(min);
        const int8x16_t fifteen = vdupq_n_s8(15);
        const int8x16_t lo = vminq_s8(trunc_affine(&b, 0, 1, min, id, 0.5f), fifteen);
        const int8x16_t hi = vminq_s8(trunc_affine(&b, 1, 1, min, id, 0.5f), fifteen);
        store_q4(y[i].qs, vreinterpretq_u8_s8(lo), vreinterpretq_u8_s8(hi));
    }
}

void quantize_row_q5_0_neon(const float *x, void *vy, int64_t k) {
    block_q5_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const struct blk b = load_block(x);
        const float d = signed_absmax(&b, x) / -16;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        const int8x16_t top = vdupq_n_s8(31);
        const int8x16_t lo = vminq_s8(trunc_affine(&b, 0, 0, 0, id, 16.5f), top);
        const int8x16_t hi = vminq_s8(trunc_affine(&b, 1, 0, 0, id, 16.5f), top);
        store_q5(y[i].qs, y[i].qh, vreinterpretq_u8_s8(lo), vreinterpretq_u8_s8(hi));
    }
}

void quantize_row_q5_1_neon(const float *x, void *vy, int64_t k) {
    block_q5_1 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const struct blk b = load_block(x);
        float min, max;
        min_max(&b, x, &min, &max);
        const float d = (max - min) / 31;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        y[i].m = tk_fp32_to_fp16(min);
        store_q5(y[i].qs, y[i].qh, trunc_affine_u(&b, 0, min, id, 0.5f), trunc_affine_u(&b, 1, min, id, 0.5f));
    }
}

void quantize_row_q8_0_neon(const float *x, void *vy, int64_t k) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const struct blk b = load_block(x);
        const float d = block_max_abs(&b) / 127;
        const float id = inverse_or_zero(d);
        y[i].d = tk_fp32_to_fp16(d);
        for (int h = 0; h < 2; h++) {
            int32x4_t q[4];
            for (int j = 0; j < 4; j++) q[j] = vcvtaq_s32_f32(vmulq_n_f32(b.v[4 * h + j], id));
            vst1q_u8((uint8_t *)y[i].qs + 16 * h, low_bytes(q[0], q[1], q[2], q[3]));
        }
    }
}

#endif
