/* ARM64 dot products of the IQ2_XXS, IQ2_XS and IQ2_S weights (quants_iq2.c) with Q8_K activations, with the bits of
   the scalar kernels there: per super-block the 8 integer lanes (lane l: elements 4l..4l+3 of every 32, weighted by
   the scale 2s + 1 of their 16), exact whatever the instructions (two grid points to a vector, their ±1 sign bytes
   multiplied in, products summed four to a lane by NEON's widening multiplies or by sdot), then one fused
   multiply-add of d per lane and the scalar kernel's final sum. At the NEON and the dotprod level (dot_neon.c's
   table chooses). */
#include <string.h>

#include "quants_iq2.h"

#if defined(__aarch64__)
#include "simd_neon.h"

#define INLINE static inline __attribute__((always_inline))

/* 16 values: grid points g0, g1 (8 unsigned bytes each) times the ±1 bytes s0, s1 */
INLINE int8x16_t signed_pair(uint64_t g0, uint64_t g1, uint64_t s0, uint64_t s1) {
    const int8x16_t v = vreinterpretq_s8_u64(vcombine_u64(vcreate_u64(g0), vcreate_u64(g1)));
    return vmulq_s8(v, vreinterpretq_s8_u64(vcombine_u64(vcreate_u64(s0), vcreate_u64(s1))));
}

#define SIGNS7(v) tk_iq2_sign_bytes[tk_iq2_ksigns[(v) & 127]]

/* one type's kernel: BLOCK its block type, SUB sets the four grid points g, their sign bytes sg and the two scales
   ls1, ls2 of sub-block ib of super-block x[i] */
#define IQ2_KERNEL(NAME, ATTR, LANES4, BLOCK, SUB)                                                                \
    Q8_K_SUPER_DOT(NAME, ATTR, BLOCK, 0.125f,                                                                     \
        uint64_t g[4], sg[4];                                                                                     \
        int ls1, ls2;                                                                                             \
        SUB;                                                                                                      \
        lo = vmlaq_n_s32(lo, LANES4(signed_pair(g[0], g[1], sg[0], sg[1]), vld1q_s8(q8)), ls1);                   \
        hi = vmlaq_n_s32(hi, LANES4(signed_pair(g[2], g[3], sg[2], sg[3]), vld1q_s8(q8 + 16)), ls2);)

#define XXS_SUB                                                                                                   \
    do {                                                                                                          \
        uint32_t aux[2];                                                                                          \
        memcpy(aux, x[i].qs + 4 * ib, 8);                                                                         \
        for (int l = 0; l < 4; ++l) {                                                                             \
            g[l] = tk_iq2xxs_grid[(aux[0] >> 8 * l) & 255];                                                       \
            sg[l] = SIGNS7(aux[1] >> 7 * l);                                                                      \
        }                                                                                                         \
        ls1 = ls2 = (int)(2 * (aux[1] >> 28) + 1);                                                                \
    } while (0)

#define XS_SUB                                                                                                    \
    do {                                                                                                          \
        for (int l = 0; l < 4; ++l) {                                                                             \
            const uint16_t q = x[i].qs[4 * ib + l];                                                               \
            g[l] = tk_iq2xs_grid[q & 511];                                                                        \
            sg[l] = SIGNS7(q >> 9);                                                                               \
        }                                                                                                         \
        ls1 = 2 * (x[i].scales[ib] & 0xf) + 1;                                                                    \
        ls2 = 2 * (x[i].scales[ib] >> 4) + 1;                                                                     \
    } while (0)

#define S_SUB                                                                                                     \
    do {                                                                                                          \
        const unsigned h = x[i].qh[ib];                                                                           \
        for (int l = 0; l < 4; ++l) {                                                                             \
            g[l] = tk_iq2s_grid[x[i].qs[4 * ib + l] | ((h << (8 - 2 * l)) & 0x300)];                              \
            sg[l] = tk_iq2_sign_bytes[x[i].qs[QK_K / 8 + 4 * ib + l]];                                            \
        }                                                                                                         \
        ls1 = 2 * (x[i].scales[ib] & 0xf) + 1;                                                                    \
        ls2 = 2 * (x[i].scales[ib] >> 4) + 1;                                                                     \
    } while (0)

IQ2_KERNEL(tk_vec_dot_iq2_xxs_q8_K_neon, NEON, lanes4_neon, block_iq2_xxs, XXS_SUB)
IQ2_KERNEL(tk_vec_dot_iq2_xxs_q8_K_dot, DOTPROD, lanes4_dot, block_iq2_xxs, XXS_SUB)
IQ2_KERNEL(tk_vec_dot_iq2_xs_q8_K_neon, NEON, lanes4_neon, block_iq2_xs, XS_SUB)
IQ2_KERNEL(tk_vec_dot_iq2_xs_q8_K_dot, DOTPROD, lanes4_dot, block_iq2_xs, XS_SUB)
IQ2_KERNEL(tk_vec_dot_iq2_s_q8_K_neon, NEON, lanes4_neon, block_iq2_s, S_SUB)
IQ2_KERNEL(tk_vec_dot_iq2_s_q8_K_dot, DOTPROD, lanes4_dot, block_iq2_s, S_SUB)

#endif
