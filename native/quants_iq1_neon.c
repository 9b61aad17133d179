/* ARM64 dot products of the IQ1_S and IQ1_M weights (quants_iq1.c) with Q8_K activations, with the bits of the
   scalar kernels there (ggml's generic order): the grid patterns of a block gathered into vectors, each integer sum
   exact whatever the instructions (NEON's widening multiplies or sdot, four products to a lane), then the scalar
   kernel's integer and float operations in its order. At the NEON and the dotprod level (dot_neon.c's table
   chooses). */
#include <string.h>

#include "quants_iq1.h"

#if defined(__aarch64__)
#include "simd_neon.h"

#define INLINE static inline __attribute__((always_inline))

/* the 16 values of grid patterns a and b */
INLINE int8x16_t grid2(int a, int b) {
    return vcombine_s8(vcreate_s8(tk_iq1s_grid[a]), vcreate_s8(tk_iq1s_grid[b]));
}

/* 8 bytes of -1 when the shift bit is set, else of +1 */
INLINE uint64_t shift_bytes(int set) { return set ? 0xFFFFFFFFFFFFFFFFull : 0x0101010101010101ull; }

#define IQ1(SUFFIX, ATTR, LANES4)                                                                                 \
    ATTR void tk_vec_dot_iq1_s_q8_K_##SUFFIX(int64_t n, float *s, const void *vx, const void *vy) {              \
        const block_iq1_s *x = vx;                                                                              \
        const block_q8_K *y = vy;                                                                               \
        float sumf = 0;                                                                                         \
        for (int64_t i = 0; i < n / QK_K; ++i) {                                                                \
            const int8_t *q8 = y[i].qs;                                                                         \
            const uint8_t *qs = x[i].qs;                                                                        \
            int sumi = 0, sumi1 = 0;                                                                            \
            for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, q8 += 32) {                                         \
                const uint16_t qh = x[i].qh[ib];                                                                \
                const int ls = 2 * ((qh >> 12) & 7) + 1, delta = qh & 0x8000 ? -1 : 1;                          \
                const int8x16_t g0 = grid2(qs[0] | ((qh << 8) & 0x700), qs[1] | ((qh << 5) & 0x700));          \
                const int8x16_t g1 = grid2(qs[2] | ((qh << 2) & 0x700), qs[3] | ((qh >> 1) & 0x700));          \
                const int lsum = vaddvq_s32(vaddq_s32(LANES4(g0, vld1q_s8(q8)), LANES4(g1, vld1q_s8(q8 + 16)))); \
                sumi += ls * lsum;                                                                              \
                sumi1 += ls * delta * (y[i].bsums[2 * ib] + y[i].bsums[2 * ib + 1]);                            \
            }                                                                                                   \
            sumf += tk_fp16_to_fp32(x[i].d) * y[i].d * (sumi + IQ1_DELTA * sumi1);                              \
        }                                                                                                       \
        *s = sumf;                                                                                              \
    }                                                                                                           \
    ATTR void tk_vec_dot_iq1_m_q8_K_##SUFFIX(int64_t n, float *s, const void *vx, const void *vy) {              \
        const block_iq1_m *x = vx;                                                                              \
        const block_q8_K *y = vy;                                                                               \
        float sumf = 0;                                                                                         \
        for (int64_t i = 0; i < n / QK_K; ++i) {                                                                \
            uint16_t sc[4];                                                                                     \
            memcpy(sc, x[i].scales, sizeof(sc));                                                                \
            const float d = tk_fp16_to_fp32((uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) |                \
                                                       ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000)));            \
            const int8_t *q8 = y[i].qs;                                                                         \
            const uint8_t *qs = x[i].qs, *qh = x[i].qh;                                                         \
            int sumi1 = 0, sumi2 = 0;                                                                           \
            for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, qh += 2, q8 += 32) {                                \
                int sum1[2], sum2[2];                                                                           \
                for (int h = 0; h < 2; ++h) {                                                                   \
                    const int8x16_t g = grid2(qs[2 * h] | ((qh[h] << 8) & 0x700),                               \
                                              qs[2 * h + 1] | ((qh[h] << 4) & 0x700));                          \
                    const int8x16_t sg = vcombine_s8(vcreate_s8(shift_bytes(qh[h] & 0x08)),                     \
                                                     vcreate_s8(shift_bytes(qh[h] & 0x80)));                    \
                    const int8x16_t a = vld1q_s8(q8 + 16 * h);                                                  \
                    sum1[h] = vaddvq_s32(LANES4(g, a));                                                         \
                    sum2[h] = vaddvq_s32(LANES4(sg, a));                                                        \
                }                                                                                               \
                const int ls1 = 2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1;                             \
                const int ls2 = 2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1;                             \
                sumi1 += sum1[0] * ls1 + sum1[1] * ls2;                                                         \
                sumi2 += sum2[0] * ls1 + sum2[1] * ls2;                                                         \
            }                                                                                                   \
            sumf += d * y[i].d * (sumi1 + IQ1_DELTA * sumi2);                                                   \
        }                                                                                                       \
        *s = sumf;                                                                                              \
    }

IQ1(neon, NEON, lanes4_neon)
IQ1(dot, DOTPROD, lanes4_dot)

#endif
