/* ARM64 dot products of the IQ4_NL and IQ4_XS weights (quants_iq.c) with their activations, with the bits of the
   scalar kernels there (IQ4_NL's in ggml's generic order, IQ4_XS's per super-block): each block's integer sum is
   exact whatever the instructions (the 4-bit indices looked up in the value table by a byte shuffle, products summed
   four to a lane by NEON's widening multiplies or by sdot), then meets the scalar kernel's float operations in its
   order. At the NEON and the dotprod level (simd_neon.h; dot_neon.c's table chooses). */
#include <math.h>

#include "quants.h"

#if defined(__aarch64__)
#include "simd_neon.h"

#define INLINE static inline __attribute__((always_inline))

/* Σ a·value over 32 elements whose values are the nibbles of 16 bytes (low nibbles first), exact */
#define IQ4_DOT32(NAME, ATTR, LANES4)                                                                            \
    ATTR INLINE int NAME(const uint8_t *qs, const int8_t *a, int8x16_t table) {                                 \
        const uint8x16_t bits = vld1q_u8(qs);                                                                   \
        const int8x16_t w0 = vqtbl1q_s8(table, vandq_u8(bits, vdupq_n_u8(0x0F)));                               \
        const int8x16_t w1 = vqtbl1q_s8(table, vshrq_n_u8(bits, 4));                                            \
        return vaddvq_s32(vaddq_s32(LANES4(w0, vld1q_s8(a)), LANES4(w1, vld1q_s8(a + 16))));                    \
    }

IQ4_DOT32(iq4_dot32_neon, NEON, lanes4_neon)
IQ4_DOT32(iq4_dot32_dot, DOTPROD, lanes4_dot)

/* quants_iq.c's tk_vec_dot_iq4_nl_q8_0 and tk_vec_dot_iq4_xs_q8_K with their integer sums by DOT32 */
#define IQ4(SUFFIX, ATTR, DOT32)                                                                                  \
    ATTR void tk_vec_dot_iq4_nl_q8_0_##SUFFIX(int64_t n, float *s, const void *vx, const void *vy) {             \
        const block_iq4_nl *x = vx;                                                                             \
        const block_q8_0 *y = vy;                                                                               \
        const int8x16_t table = vld1q_s8(tk_iq4nl_values);                                                      \
        float sumf = 0;                                                                                         \
        for (int64_t ib = 0; ib < n / QK; ++ib) {                                                               \
            const float d = tk_fp16_to_fp32(y[ib].d) * tk_fp16_to_fp32(x[ib].d);                                \
            sumf += d * DOT32(x[ib].qs, y[ib].qs, table);                                                       \
        }                                                                                                       \
        *s = sumf;                                                                                              \
    }                                                                                                           \
    ATTR void tk_vec_dot_iq4_xs_q8_K_##SUFFIX(int64_t n, float *s, const void *vx, const void *vy) {             \
        const block_iq4_xs *x = vx;                                                                             \
        const block_q8_K *y = vy;                                                                               \
        const int8x16_t table = vld1q_s8(tk_iq4nl_values);                                                      \
        float sumf = 0;                                                                                         \
        for (int64_t i = 0; i < n / QK_K; ++i) {                                                                \
            int32_t isum = 0;                                                                                   \
            for (int ib = 0; ib < QK_K / 32; ++ib) {                                                            \
                const int ls = (((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) |                               \
                                (((x[i].scales_h >> 2 * ib) & 3) << 4)) - 32;                                   \
                isum += ls * DOT32(x[i].qs + 16 * ib, y[i].qs + 32 * ib, table);                                \
            }                                                                                                   \
            sumf = fmaf(tk_fp16_to_fp32(x[i].d) * y[i].d, (float)isum, sumf);                                   \
        }                                                                                                       \
        *s = sumf;                                                                                              \
    }

IQ4(neon, NEON, iq4_dot32_neon)
IQ4(dot, DOTPROD, iq4_dot32_dot)

#endif
