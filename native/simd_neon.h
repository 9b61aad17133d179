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
