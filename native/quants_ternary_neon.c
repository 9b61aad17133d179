/* ARM64 dot products of the ternary TQ1_0 and TQ2_0 weights (quants_ternary.c) with their Q8_K activations, with the
   bits of the scalar kernels there: the trits (0, 1, 2) unpacked sixteen at a time, as the weights -1, 0, 1, Σ weight·a
   (exact) summed four products to a lane by NEON's widening multiplies or by sdot, then the scalar kernel's float
   operations in its order. At the NEON and the dotprod level (simd_neon.h; dot_neon.c's
   table chooses). */
#include <string.h>
#include "quants.h"

#if defined(__aarch64__)
#include "simd_neon.h"

#define INLINE static inline __attribute__((always_inline))

/* trit k of bytes q (quants_ternary.c's unpack_trit), given p = q · 3^k mod 256: (p · 3) >> 8 */
static inline uint8x16_t trits_of(uint8x16_t p) {
    const uint8x8_t three = vdup_n_u8(3);
    return vcombine_u8(vshrn_n_u16(vmull_u8(vget_low_u8(p), three), 8), vshrn_n_u16(vmull_high_u8(p, vdupq_n_u8(3)), 8));
}

/* trits 0, 1, 2 as the weights -1, 0, 1 */
static inline int8x16_t weights_of(uint8x16_t t) { return vsubq_s8(vreinterpretq_s8_u8(t), vdupq_n_s8(1)); }

#define TQ(SUFFIX, ATTR, LANES4)                                                                                 \
    ATTR void tk_vec_dot_tq1_0_q8_K_##SUFFIX(int64_t n, float *s, const void *vx, const void *vy) {              \
        const block_tq1_0 *x = vx;                                                                              \
        const block_q8_K *y = vy;                                                                               \
        static const uint8_t pow3[5] = {1, 3, 9, 27, 81};                                                       \
        static const uint8_t pow3_qh[16] = {1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27};                \
        float sumf = 0.0f;                                                                                      \
        for (int64_t i = 0; i < n / QK_K; ++i) {                                                                \
            const int8_t *a = y[i].qs;                                                                          \
            const uint8x16_t q0 = vld1q_u8(x[i].qs), q1 = vld1q_u8(x[i].qs + 16), q2 = vld1q_u8(x[i].qs + 32);  \
            int32x4_t acc = vdupq_n_s32(0);                                                                     \
            for (int k = 0; k < 5; ++k) {                                                                       \
                const uint8x16_t pk = vdupq_n_u8(pow3[k]);                                                      \
                /* elements 32k..32k+31 from qs[0..31], 160+16k.. from qs[32..47] */                            \
                acc = vaddq_s32(acc, LANES4(weights_of(trits_of(vmulq_u8(q0, pk))), vld1q_s8(a + 32 * k))); \
                acc = vaddq_s32(acc, LANES4(weights_of(trits_of(vmulq_u8(q1, pk))),                    \
                                            vld1q_s8(a + 32 * k + 16)));                                        \
                acc = vaddq_s32(acc, LANES4(weights_of(trits_of(vmulq_u8(q2, pk))),                    \
                                            vld1q_s8(a + 160 + 16 * k)));                                       \
            }                                                                                                   \
            /* elements 240 + 4k + j: trit k of qh[j] */                                                        \
            uint32_t h;                                                                                         \
            memcpy(&h, x[i].qh, 4);                                                                             \
            const uint8x16_t ph = vmulq_u8(vreinterpretq_u8_u32(vdupq_n_u32(h)), vld1q_u8(pow3_qh));             \
            acc = vaddq_s32(acc, LANES4(weights_of(trits_of(ph)), vld1q_s8(a + 240)));                 \
            const int sum = vaddvq_s32(acc);                                                \
            sumf += (float)sum * (tk_fp16_to_fp32(x[i].d) * y[i].d);                                            \
        }                                                                                                       \
        *s = sumf;                                                                                              \
    }                                                                                                           \
    ATTR void tk_vec_dot_tq2_0_q8_K_##SUFFIX(int64_t n, float *s, const void *vx, const void *vy) {              \
        const block_tq2_0 *x = vx;                                                                              \
        const block_q8_K *y = vy;                                                                               \
        const uint8x16_t m3 = vdupq_n_u8(3);                                                                    \
        float sumf = 0.0f;                                                                                      \
        for (int64_t i = 0; i < n / QK_K; ++i) {                                                                \
            int32x4_t acc = vdupq_n_s32(0);                                                                     \
            for (int h = 0; h < 2; ++h) {                                                                       \
                const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h), q1 = vld1q_u8(x[i].qs + 32 * h + 16);         \
                for (int j = 0; j < 4; ++j) {                                                                   \
                    /* elements 128h + 32j + m: bits 2j, 2j+1 of qs[32h + m] */                                 \
                    const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * j));                                          \
                    const int8_t *a = y[i].qs + 128 * h + 32 * j;                                               \
                    acc = vaddq_s32(acc, LANES4(weights_of(vandq_u8(vshlq_u8(q0, sh), m3)), vld1q_s8(a))); \
                    acc = vaddq_s32(acc, LANES4(weights_of(vandq_u8(vshlq_u8(q1, sh), m3)),            \
                                                vld1q_s8(a + 16)));                                             \
                }                                                                                               \
            }                                                                                                   \
            const int32_t sumi = vaddvq_s32(acc);                                           \
            sumf += (float)sumi * (y[i].d * tk_fp16_to_fp32(x[i].d));                                           \
        }                                                                                                       \
        *s = sumf;                                                                                              \
    }

TQ(neon, NEON, lanes4_neon)
TQ(dot, DOTPROD, lanes4_dot)

#endif
