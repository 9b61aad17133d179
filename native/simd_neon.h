/* What the ARM64 kernel files share: the target attributes of their two levels (ARMv8.0 NEON, and ARMv8.2 dotprod
   compiled per function so that one binary runs on every ARM64 CPU; chosen at run time, see tk_arm_level), the
   four-products-per-lane integer sums both levels compute, and the kernels of other files dot_neon.c's table points
   to. Included inside their __aarch64__ guard. */
#ifndef TOOLKIT_SIMD_NEON_H
#define TOOLKIT_SIMD_NEON_H

#include <arm_neon.h>
#include "quants.h"

#if defined(__clang__)
#define DOTPROD __attribute__((target("dotprod")))
#else
#define DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#define NEON

/* lane l (0..3) = Σ of the four products 4l..4l+3 of w·a, exact */
static inline int32x4_t lanes4_neon(int8x16_t w, int8x16_t a) {
    const int32x4_t p0 = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(a)));
    const int32x4_t p1 = vpaddlq_s16(vmull_high_s8(w, a));
    return vpaddq_s32(p0, p1);
}

#if defined(__clang__) && !defined(__ARM_FEATURE_DOTPROD)
/* clang before 16 declares vdotq_s32 only when the whole file is built for dotprod: the instruction itself */
DOTPROD static inline int32x4_t lanes4_dot(int8x16_t w, int8x16_t a) {
    int32x4_t r = vdupq_n_s32(0);
    __asm__(".arch armv8.2-a+dotprod\n\tsdot %0.4s, %1.16b, %2.16b" : "+w"(r) : "w"(w), "w"(a));
    return r;
}
#else
DOTPROD static inline int32x4_t lanes4_dot(int8x16_t w, int8x16_t a) { return vdotq_s32(vdupq_n_s32(0), w, a); }
#endif

/* the scalar kernels' tk_lanes_sum8 of 8 float lanes, ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), lanes 0..3
   in lo, 4..7 in hi */
static inline float lanes_total(float32x4_t lo, float32x4_t hi) {
    const float32x4_t t = vaddq_f32(lo, hi);
    return (vgetq_lane_f32(t, 0) + vgetq_lane_f32(t, 2)) + (vgetq_lane_f32(t, 1) + vgetq_lane_f32(t, 3));
}

/* A dot product of BLOCK weights (a fp16 d per super-block of QK_K) with Q8_K activations, as the scalar IQ kernels
   order it: per sub-block of 32 (ib, its activations q8), the body (the variadic arguments) adds its integer lanes
   into lo (elements 0..15) and hi (16..31); per super-block one fused multiply-add of d_x·d_y per lane; FACTOR times
   lanes_total at the end. */
#define Q8_K_SUPER_DOT(NAME, ATTR, BLOCK, FACTOR, ...)                                                           \
    ATTR void NAME(int64_t n, float *s, const void *vx, const void *vy) {                                         \
        const BLOCK *x = vx;                                                                                      \
        const block_q8_K *y = vy;                                                                                 \
        float32x4_t acc_lo = vdupq_n_f32(0), acc_hi = vdupq_n_f32(0);                                             \
        for (int64_t i = 0; i < n / QK_K; ++i) {                                                                  \
            const float d = tk_fp16_table[x[i].d] * y[i].d;                                                       \
            int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);                                                   \
            for (int ib = 0; ib < QK_K / 32; ++ib) {                                                              \
                const int8_t *q8 = y[i].qs + 32 * ib;                                                             \
                __VA_ARGS__                                                                                       \
            }                                                                                                     \
            acc_lo = vfmaq_n_f32(acc_lo, vcvtq_f32_s32(lo), d);                                                   \
            acc_hi = vfmaq_n_f32(acc_hi, vcvtq_f32_s32(hi), d);                                                   \
        }                                                                                                         \
        *s = FACTOR * lanes_total(acc_lo, acc_hi);                                                                \
    }

/* quants_iq_neon.c (IQ4_NL, IQ4_XS) and quants_ternary_neon.c (TQ1_0, TQ2_0): the bits of their scalar kernels, at
   the NEON and the dotprod level */
void tk_vec_dot_iq4_nl_q8_0_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq4_nl_q8_0_dot(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq4_xs_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq4_xs_q8_K_dot(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_tq1_0_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_tq1_0_q8_K_dot(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_tq2_0_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_tq2_0_q8_K_dot(int64_t n, float *s, const void *x, const void *y);

#endif
