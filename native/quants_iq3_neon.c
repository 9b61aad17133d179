/* ARM64 dot products of the IQ3_XXS and IQ3_S weights (quants_iq3.c) with Q8_K activations, with the bits of the
   scalar kernels there: per super-block the 8 integer lanes (lane l: elements 4l..4l+3 of every 32, weighted by
   the sub-block's 2·scale + 1), exact whatever the instructions (the grid entries of a sub-block gathered into two
   vectors with their signs applied, products summed four to a lane by NEON's widening multiplies or by sdot), then
   one fused multiply-add of d per lane and the scalar kernel's final sum. At the NEON and the dotprod level
   (dot_neon.c's table chooses). */
#include <string.h>

#include "quants_iq3.h"

#if defined(__aarch64__)
#include "simd_neon.h"

#define INLINE static inline __attribute__((always_inline))

/* 16 values: grid entries a, b, c, d (4 unsigned values each), negated where the bits of the sign bytes s0 (first 8)
   and s1 (last 8) are set */
INLINE int8x16_t signed_values(uint32_t a, uint32_t b, uint32_t c, uint32_t d, unsigned s0, unsigned s1) {
    const int8x16_t v = vreinterpretq_s8_u64(vcombine_u64(vcreate_u64(a | (uint64_t)b << 32),
                                                          vcreate_u64(c | (uint64_t)d << 32)));
    const uint8x16_t bits = vcombine_u8(vdup_n_u8((uint8_t)s0), vdup_n_u8((uint8_t)s1));
    const uint8x16_t neg = vtstq_u8(bits, vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ull)));
    return vbslq_s8(neg, vnegq_s8(v), v);
}

/* the sign bits of the 7-bit group (the eighth its parity) */
INLINE unsigned even_signs(uint32_t group7) { return group7 | ((unsigned)__builtin_parity(group7) << 7); }

/* a sub-block's 32 values as v0, v1 (grid entries with their signs applied) and its scale ls, into lo and hi */
#define IQ3_LANES(LANES4)                                                                                         \
    lo = vmlaq_n_s32(lo, LANES4(v0, vld1q_s8(q8)), ls);                                                           \
    hi = vmlaq_n_s32(hi, LANES4(v1, vld1q_s8(q8 + 16)), ls);

#define IQ3(SUFFIX, ATTR, LANES4)                                                                                 \
    Q8_K_SUPER_DOT(tk_vec_dot_iq3_xxs_q8_K_##SUFFIX, ATTR, block_iq3_xxs, 0.25f,                                  \
        uint32_t w;                                                                                               \
        memcpy(&w, x[i].qs + QK_K / 4 + 4 * ib, 4);                                                               \
        const uint8_t *q3 = x[i].qs + 8 * ib;                                                                     \
        const int ls = (int)(2 * (w >> 28) + 1);                                                                  \
        const int8x16_t v0 = signed_values(tk_iq3xxs_grid[q3[0]], tk_iq3xxs_grid[q3[1]], tk_iq3xxs_grid[q3[2]],   \
                                           tk_iq3xxs_grid[q3[3]], even_signs(w & 127), even_signs(w >> 7 & 127)); \
        const int8x16_t v1 = signed_values(tk_iq3xxs_grid[q3[4]], tk_iq3xxs_grid[q3[5]], tk_iq3xxs_grid[q3[6]],   \
                                           tk_iq3xxs_grid[q3[7]], even_signs(w >> 14 & 127),                      \
                                           even_signs(w >> 21 & 127));                                            \
        IQ3_LANES(LANES4))                                                                                        \
    Q8_K_SUPER_DOT(tk_vec_dot_iq3_s_q8_K_##SUFFIX, ATTR, block_iq3_s, 1.0f,                                       \
        const uint8_t *qs = x[i].qs + 8 * ib, *sg = x[i].signs + 4 * ib;                                          \
        const unsigned h = x[i].qh[ib];                                                                           \
        const int ls = 2 * ((x[i].scales[ib / 2] >> 4 * (ib % 2)) & 0xF) + 1;                                     \
        uint32_t g[8];                                                                                            \
        for (int k = 0; k < 8; ++k) g[k] = tk_iq3s_grid[qs[k] | ((h >> k & 1) << 8)];                             \
        const int8x16_t v0 = signed_values(g[0], g[1], g[2], g[3], sg[0], sg[1]);                                 \
        const int8x16_t v1 = signed_values(g[4], g[5], g[6], g[7], sg[2], sg[3]);                                 \
        IQ3_LANES(LANES4))

IQ3(neon, NEON, lanes4_neon)
IQ3(dot, DOTPROD, lanes4_dot)

#endif
