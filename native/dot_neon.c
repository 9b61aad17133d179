/* ARM64 versions of the vec_dots of dot.c (chosen at run time by tk_vec_dot when tk_use_simd(); see tk_arm_level).

   Every quantized kernel gives the bits of dot.c's scalar one: the integer sums inside blocks are exact whatever the
   instructions, and they land in the same eight integer lanes (four consecutive products per lane for the legacy
   types, Q2_K and Q5_K; element index mod 8 for Q3_K, Q4_K and Q6_K; Q4_0 sums each block whole), which then meet
   the same float operations in the same order (fused where the scalar code calls fmaf, a separate multiply and add
   where it does not: the core is built with -ffp-contract=off). Two sets of kernels: ARMv8.0 NEON (every ARM64 CPU: widening multiplies and pairwise
   adds) and, where a lane is four consecutive bytes, ARMv8.2 dotprod (sdot), compiled per function with a target
   attribute so that one binary runs on every ARM64 CPU. The mod-8 lane types keep the NEON kernel at the dotprod
   level (sdot would need a byte shuffle of both operands per block to meet those lanes). F32, F16 and BF16 sum in
   four float vectors with FMA, so they differ from the scalar kernels (which sum in double) by float rounding. Each
   kernel has a two-row form for tk_matmul_rows (one activation block read for two weight rows) with the one-row
   kernel's bits. At the i8mm level Q4_0's prompt tile is dot_i8mm.c's (smmla). The table at the end also holds the IQ4_NL, IQ4_XS, TQ1_0 and TQ2_0 kernels (quants_iq_neon.c,
   quants_ternary_neon.c; one row at a time, the scalar bits too). */
#include <math.h>
#include <string.h>
#include "quants.h"
#include "quants_iq1.h"
#include "quants_iq3.h"
#include "quants_iq2.h"

#if defined(__aarch64__)
#include "simd_neon.h"

#define H2F(h) tk_fp16_table[(tk_half)(h)]

/* ---------------------------------------------------------------------------------------------- lanes */

/* s + lane 0 + lane 1 + ... + lane 7, one at a time (the k-quants' final sum in dot.c) */
static inline float lanes_seq8(float s, float32x4_t lo, float32x4_t hi) {
    s += vgetq_lane_f32(lo, 0); s += vgetq_lane_f32(lo, 1); s += vgetq_lane_f32(lo, 2); s += vgetq_lane_f32(lo, 3);
    s += vgetq_lane_f32(hi, 0); s += vgetq_lane_f32(hi, 1); s += vgetq_lane_f32(hi, 2); s += vgetq_lane_f32(hi, 3);
    return s;
}

/* bit j of the 32-bit word at qh, for j = 16·half + lane, as 0x10 or 0 per byte lane */
static inline uint8x16_t fifth_bits(const uint8_t qh[4], int half) {
    static const uint8_t idx[2][16] = {{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
                                       {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3}};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint32_t h;
    memcpy(&h, qh, 4);
    const uint8x16_t b = vqtbl1q_u8(vreinterpretq_u8_u32(vdupq_n_u32(h)), vld1q_u8(idx[half]));
    return vandq_u8(vtstq_u8(b, vld1q_u8(bit)), vdupq_n_u8(0x10));
}

/* ---------------------------------------------------------------------------------------------- legacy types */
/* weights of one block: elements 0..15 in w0, 16..31 in w1 */

static inline void w_q4_0(const block_q4_0 *x, int8x16_t *w0, int8x16_t *w1) {
    const uint8x16_t q = vld1q_u8(x->qs);
    *w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vdupq_n_s8(8));
    *w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
}

static inline void w_q4_1(const block_q4_1 *x, int8x16_t *w0, int8x16_t *w1) {
    const uint8x16_t q = vld1q_u8(x->qs);
    *w0 = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F)));
    *w1 = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
}

static inline void w_q5_0(const block_q5_0 *x, int8x16_t *w0, int8x16_t *w1) {
    const uint8x16_t q = vld1q_u8(x->qs);
    *w0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), fifth_bits(x->qh, 0))), vdupq_n_s8(16));
    *w1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), fifth_bits(x->qh, 1))), vdupq_n_s8(16));
}

static inline void w_q5_1(const block_q5_1 *x, int8x16_t *w0, int8x16_t *w1) {
    const uint8x16_t q = vld1q_u8(x->qs);
    *w0 = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), fifth_bits(x->qh, 0)));
    *w1 = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), fifth_bits(x->qh, 1)));
}

static inline void w_q8_0(const block_q8_0 *x, int8x16_t *w0, int8x16_t *w1) {
    *w0 = vld1q_s8(x->qs);
    *w1 = vld1q_s8(x->qs + 16);
}

/* Every kernel is written once for nr = 1 or 2 weight rows against one activation row (always inlined, so each
   row's operations are exactly the one-row kernel's): the two-row kernels of tk_matmul_rows give vec_dot's bits. */
#define INLINE static inline __attribute__((always_inline))
#define ROWS(NAME, ATTR)                                                                                         \
    ATTR static void NAME(int64_t n, float *s, const void *vx, const void *vy) { NAME##_rows(n, s, vx, 0, vy, 1); } \
    ATTR static void NAME##2(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {                   \
        NAME##_rows(n, s, vx, bx, vy, 2);                                                                       \
    }
#define ROW_PTR(T, vx, bx, r) ((const T *)((const char *)(vx) + (size_t)(r) * (bx)))

/* dot.c's LEGACY_SCALAR: per block, lane l += d_x·d_y · (four products) with one FMA; lanes summed at the end. Written
   once for nr weight rows × nt activation rows (always inlined with constant nr, nt): the one-row and two-row kernels
   are its 1 × 1 and 2 × 1 cases, prompt processing's tile its LEGACY_TILE_ROWS × LEGACY_TILE_TOKENS one (each block's
   weights unpacked once for all its tokens); every (row, token) pair gets the one-row kernel's operations. */
#define LEGACY_TILE_ROWS 2
#define LEGACY_TILE_TOKENS 4
/* a tile's float lanes per (row, token), lo (lanes 0..3) and hi (4..7), zeroed; and a float sum per pair, zeroed */
#define TILE_LANES                                                                                               \
    float32x4_t lo[LEGACY_TILE_ROWS][LEGACY_TILE_TOKENS], hi[LEGACY_TILE_ROWS][LEGACY_TILE_TOKENS];             \
    for (int r = 0; r < nr; r++)                                                                                \
        for (int t = 0; t < nt; t++) lo[r][t] = hi[r][t] = vdupq_n_f32(0.0f)
#define TILE_SUMS(SUM) float SUM[LEGACY_TILE_ROWS][LEGACY_TILE_TOKENS] = {{0}}
#define LEGACY(NAME, ATTR, LANES4, XT, YT, WEIGHTS, MIN)                                                         \
    ATTR INLINE void NAME##_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,      \
                                  size_t by, const int nr, const int nt) {                                      \
        TILE_LANES;                                                                                             \
        TILE_SUMS(summ);                                                                                        \
        for (int64_t b = 0; b < n / QK; b++) {                                                                  \
            int8x16_t w0[LEGACY_TILE_ROWS], w1[LEGACY_TILE_ROWS];                                               \
            for (int r = 0; r < nr; r++) WEIGHTS(ROW_PTR(XT, vx, bx, r) + b, &w0[r], &w1[r]);                    \
            for (int t = 0; t < nt; t++) {                                                                      \
                const YT *y = ROW_PTR(YT, vy, by, t) + b;                                                        \
                const int8x16_t a0 = vld1q_s8(y->qs), a1 = vld1q_s8(y->qs + 16);                                \
                for (int r = 0; r < nr; r++) {                                                                  \
                    const XT *x = ROW_PTR(XT, vx, bx, r) + b;                                                    \
                    const float d = H2F(x->d) * H2F(y->d);                                                      \
                    lo[r][t] = vfmaq_n_f32(lo[r][t], vcvtq_f32_s32(LANES4(w0[r], a0)), d);                      \
                    hi[r][t] = vfmaq_n_f32(hi[r][t], vcvtq_f32_s32(LANES4(w1[r], a1)), d);                      \
                    MIN;                                                                                        \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        for (int r = 0; r < nr; r++)                                                                            \
            for (int t = 0; t < nt; t++) s[r * ls + t] = lanes_total(lo[r][t], hi[r][t]) + summ[r][t];           \
    }                                                                                                           \
    LEGACY_ENTRIES(NAME, ATTR)

/* a kernel's one-row and two-row products and its TR × TT tile, from its NAME##_block */
#define BLOCK_ENTRIES(NAME, ATTR, TR, TT)                                                                        \
    ATTR INLINE void NAME##_rows(int64_t n, float *s, const void *vx, size_t bx, const void *vy, const int nr) {  \
        NAME##_block(n, s, 1, vx, bx, vy, 0, nr, 1);                                                            \
    }                                                                                                           \
    ROWS(NAME, ATTR)                                                                                            \
    ATTR static void NAME##_tile(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,       \
                                 size_t by) {                                                                   \
        NAME##_block(n, s, ls, vx, bx, vy, by, TR, TT);                                                         \
    }
#define LEGACY_ENTRIES(NAME, ATTR) BLOCK_ENTRIES(NAME, ATTR, LEGACY_TILE_ROWS, LEGACY_TILE_TOKENS)

/* Q4_0 in dot.c's block-sum order (llama.cpp's repacked Q4_0 gemv/gemm): per block and (row, token) the exact integer
   Σ (q - 8)·y (its eight lanes added up), then acc = fmaf(Σ, d_x·d_y, acc), blocks in order; same shapes as LEGACY */
#define Q4_0_BLOCKSUM(NAME, ATTR, LANES4)                                                                        \
    ATTR INLINE void NAME##_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,      \
                                  size_t by, const int nr, const int nt) {                                      \
        float acc[LEGACY_TILE_ROWS][LEGACY_TILE_TOKENS];                                                        \
        for (int r = 0; r < nr; r++)                                                                            \
            for (int t = 0; t < nt; t++) acc[r][t] = 0;                                                         \
        for (int64_t b = 0; b < n / QK; b++) {                                                                  \
            int8x16_t w0[LEGACY_TILE_ROWS], w1[LEGACY_TILE_ROWS];                                               \
            for (int r = 0; r < nr; r++) w_q4_0(ROW_PTR(block_q4_0, vx, bx, r) + b, &w0[r], &w1[r]);             \
            for (int t = 0; t < nt; t++) {                                                                      \
                const block_q8_0 *y = ROW_PTR(block_q8_0, vy, by, t) + b;                                        \
                const int8x16_t a0 = vld1q_s8(y->qs), a1 = vld1q_s8(y->qs + 16);                                \
                for (int r = 0; r < nr; r++) {                                                                  \
                    const block_q4_0 *x = ROW_PTR(block_q4_0, vx, bx, r) + b;                                    \
                    const int32_t sum = vaddvq_s32(vaddq_s32(LANES4(w0[r], a0), LANES4(w1[r], a1)));            \
                    acc[r][t] = fmaf((float)sum, H2F(x->d) * H2F(y->d), acc[r][t]);                             \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        for (int r = 0; r < nr; r++)                                                                            \
            for (int t = 0; t < nt; t++) s[r * ls + t] = acc[r][t];                                             \
    }                                                                                                           \
    LEGACY_ENTRIES(NAME, ATTR)

#define MIN_NONE (void)0
#define MIN_Q8_1 summ[r][t] += H2F(x->m) * H2F(y->s)

#define LEGACY_BOTH(T, YT, MIN)                                                                                  \
    LEGACY(dot_##T##_neon, NEON, lanes4_neon, block_##T, YT, w_##T, MIN)                                          \
    LEGACY(dot_##T##_dot, DOTPROD, lanes4_dot, block_##T, YT, w_##T, MIN)

Q4_0_BLOCKSUM(dot_q4_0_neon, NEON, lanes4_neon)
Q4_0_BLOCKSUM(dot_q4_0_dot, DOTPROD, lanes4_dot)
LEGACY_BOTH(q4_1, block_q8_1, MIN_Q8_1)
LEGACY_BOTH(q5_0, block_q8_0, MIN_NONE)
LEGACY_BOTH(q5_1, block_q8_1, MIN_Q8_1)
LEGACY_BOTH(q8_0, block_q8_0, MIN_NONE)

/* ---------------------------------------------------------------------------------------------- Q2_K, Q5_K */
/* lanes of four consecutive products within each 32-quant row: dot.c's AVX2-order kernels */

#define Q2_K(NAME, ATTR, LANES4)                                                                                 \
    ATTR INLINE void NAME##_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,      \
                                  size_t by, const int nr, const int nt) {                                      \
        TILE_LANES;                                                                                             \
        for (int64_t b = 0; b < n / QK_K; b++)                                                                  \
            for (int r = 0; r < nr; r++) {                                                                      \
                const block_q2_K *x = ROW_PTR(block_q2_K, vx, bx, r) + b;                                        \
                const uint8_t *sc = x->scales;                                                                  \
                const uint8x16_t m = vshrq_n_u8(vld1q_u8(sc), 4);                                               \
                const int16x8_t m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));                           \
                const int16x8_t m1 = vreinterpretq_s16_u16(vmovl_high_u8(m));                                    \
                int8x16_t w[16]; /* elements 128k + 32j + (0..15) in w[2(4k + j)], + 16 in w[2(4k + j) + 1] */  \
                for (int k = 0; k < 2; k++) {                                                                   \
                    const uint8x16_t q0 = vld1q_u8(x->qs + 32 * k), q1 = vld1q_u8(x->qs + 32 * k + 16);         \
                    for (int j = 0; j < 4; j++) {                                                               \
                        const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * j));                                      \
                        w[2 * (4 * k + j)] = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q0, sh), vdupq_n_u8(3)));    \
                        w[2 * (4 * k + j) + 1] = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q1, sh), vdupq_n_u8(3)));\
                    }                                                                                           \
                }                                                                                               \
                for (int t = 0; t < nt; t++) {                                                                  \
                    const block_q8_K *y = ROW_PTR(block_q8_K, vy, by, t) + b;                                    \
                    const float dall = y->d * H2F(x->d), dmin = y->d * H2F(x->dmin);                            \
                    /* mins: lane l = bsums[2l]·m[2l] + bsums[2l+1]·m[2l+1] (|bsum·m| <= 2048·15 fits int16) */   \
                    const int16x8_t bs0 = vld1q_s16(y->bsums), bs1 = vld1q_s16(y->bsums + 8);                   \
                    lo[r][t] = vfmaq_n_f32(lo[r][t], vcvtq_f32_s32(vpaddlq_s16(vmulq_s16(bs0, m0))), -dmin);    \
                    hi[r][t] = vfmaq_n_f32(hi[r][t], vcvtq_f32_s32(vpaddlq_s16(vmulq_s16(bs1, m1))), -dmin);    \
                    int32x4_t i0 = vdupq_n_s32(0), i1 = i0;                                                     \
                    for (int mi = 0; mi < 8; mi++) {                                                            \
                        const int8_t *q8 = y->qs + 32 * mi;                                                     \
                        i0 = vmlaq_n_s32(i0, LANES4(w[2 * mi], vld1q_s8(q8)), sc[2 * mi] & 0x0F);                \
                        i1 = vmlaq_n_s32(i1, LANES4(w[2 * mi + 1], vld1q_s8(q8 + 16)), sc[2 * mi + 1] & 0x0F);   \
                    }                                                                                           \
                    lo[r][t] = vfmaq_n_f32(lo[r][t], vcvtq_f32_s32(i0), dall);                                  \
                    hi[r][t] = vfmaq_n_f32(hi[r][t], vcvtq_f32_s32(i1), dall);                                  \
                }                                                                                               \
            }                                                                                                   \
        for (int r = 0; r < nr; r++)                                                                            \
            for (int t = 0; t < nt; t++) s[r * ls + t] = lanes_total(lo[r][t], hi[r][t]);                        \
    }                                                                                                           \
    LEGACY_ENTRIES(NAME, ATTR)

Q2_K(dot_q2_K_neon, NEON, lanes4_neon)
Q2_K(dot_q2_K_dot, DOTPROD, lanes4_dot)

#define Q5_K(NAME, ATTR, LANES4)                                                                                 \
    ATTR INLINE void NAME##_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,      \
                                  size_t by, const int nr, const int nt) {                                      \
        TILE_LANES;                                                                                             \
        TILE_SUMS(summs);                                                                                       \
        const uint8x16_t s16 = vdupq_n_u8(0x10), m4 = vdupq_n_u8(0x0F);                                         \
        for (int64_t b = 0; b < n / QK_K; b++)                                                                  \
            for (int r = 0; r < nr; r++) {                                                                      \
                const block_q5_K *x = ROW_PTR(block_q5_K, vx, bx, r) + b;                                        \
                uint8_t sc[8], mn[8];                                                                           \
                tk_unpack_scales_k4(x->scales, sc, mn);                                                         \
                const uint8x16_t h0 = vld1q_u8(x->qh), h1 = vld1q_u8(x->qh + 16);                               \
                int8x16_t w[16]; /* elements 64j + 16i + (0..15) in w[4j + i] */                                \
                for (int j = 0; j < 4; j++) {                                                                   \
                    const uint8x16_t q0 = vld1q_u8(x->qs + 32 * j), q1 = vld1q_u8(x->qs + 32 * j + 16);         \
                    const uint8x16_t bl = vdupq_n_u8((uint8_t)(1 << (2 * j))), bh = vdupq_n_u8((uint8_t)(2 << (2 * j))); \
                    w[4 * j] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q0, m4), vandq_u8(vtstq_u8(h0, bl), s16)));  \
                    w[4 * j + 1] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q1, m4), vandq_u8(vtstq_u8(h1, bl), s16))); \
                    w[4 * j + 2] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q0, 4), vandq_u8(vtstq_u8(h0, bh), s16))); \
                    w[4 * j + 3] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q1, 4), vandq_u8(vtstq_u8(h1, bh), s16))); \
                }                                                                                               \
                for (int t = 0; t < nt; t++) {                                                                  \
                    const block_q8_K *y = ROW_PTR(block_q8_K, vy, by, t) + b;                                    \
                    const float d = y->d * H2F(x->d), dmin = y->d * H2F(x->dmin);                               \
                    int summ = 0;                                                                               \
                    for (int j = 0; j < 16; j++) summ += y->bsums[j] * mn[j / 2];                               \
                    summs[r][t] += -dmin * (float)summ;                                                         \
                    int32x4_t i0 = vdupq_n_s32(0), i1 = i0;                                                     \
                    for (int j = 0; j < 4; j++) {                                                               \
                        const int8_t *q8 = y->qs + 64 * j;                                                      \
                        i0 = vmlaq_n_s32(i0, LANES4(w[4 * j], vld1q_s8(q8)), sc[2 * j]);                        \
                        i1 = vmlaq_n_s32(i1, LANES4(w[4 * j + 1], vld1q_s8(q8 + 16)), sc[2 * j]);               \
                        i0 = vmlaq_n_s32(i0, LANES4(w[4 * j + 2], vld1q_s8(q8 + 32)), sc[2 * j + 1]);           \
                        i1 = vmlaq_n_s32(i1, LANES4(w[4 * j + 3], vld1q_s8(q8 + 48)), sc[2 * j + 1]);           \
                    }                                                                                           \
                    lo[r][t] = vfmaq_n_f32(lo[r][t], vcvtq_f32_s32(i0), d);                                     \
                    hi[r][t] = vfmaq_n_f32(hi[r][t], vcvtq_f32_s32(i1), d);                                     \
                }                                                                                               \
            }                                                                                                   \
        for (int r = 0; r < nr; r++)                                                                            \
            for (int t = 0; t < nt; t++) s[r * ls + t] = lanes_total(lo[r][t], hi[r][t]) + summs[r][t];          \
    }                                                                                                           \
    LEGACY_ENTRIES(NAME, ATTR)

Q5_K(dot_q5_K_neon, NEON, lanes4_neon)
Q5_K(dot_q5_K_dot, DOTPROD, lanes4_dot)

/* ---------------------------------------------------------------------------------------------- Q3_K, Q4_K, Q6_K */
/* dot.c's lanes_add: integer lane l sums the products of the elements whose index is l mod 8, each group's products
   times its scale; then float lane l += d · lane l (multiply, then add). With 8-byte halves of the vectors, a widening
   multiply puts element 8c + l in lane l. */

/* acc (lanes 0..3 in lo, 4..7 in hi) += sc · (lane sums of p, an int16 lane sum of one group) */
static inline void add_group(int32x4_t *lo, int32x4_t *hi, int16x8_t p, int sc) {
    *lo = vmlal_n_s16(*lo, vget_low_s16(p), (int16_t)sc);
    *hi = vmlal_high_n_s16(*hi, p, (int16_t)sc);
}

/* int16 lane sums of the 16 products a·q (two per lane; |a| <= 32, |q| <= 128: at most 8192) */
static inline int16x8_t prod16(int8x16_t a, int8x16_t q) {
    return vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(q)), a, q);
}

static inline void float_lanes(float32x4_t *lo, float32x4_t *hi, float d, int32x4_t i0, int32x4_t i1) {
    *lo = vaddq_f32(*lo, vmulq_n_f32(vcvtq_f32_s32(i0), d));
    *hi = vaddq_f32(*hi, vmulq_n_f32(vcvtq_f32_s32(i1), d));
}

NEON INLINE void dot_q3_K_neon_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,
                                     size_t by, const int nr, const int nt) {
    TILE_LANES;
    const uint8x16_t four = vdupq_n_u8(4);
    for (int64_t b = 0; b < n / QK_K; b++)
        for (int r = 0; r < nr; r++) {
            const block_q3_K *x = ROW_PTR(block_q3_K, vx, bx, r) + b;
            int8_t sc[16];
            tk_unpack_scales_q3_K(x->scales, sc);
            const uint8x16_t hm0 = vld1q_u8(x->hmask), hm1 = vld1q_u8(x->hmask + 16);
            int8x16_t w[16]; /* elements 128h + 32k + 16c + (0..15), group 8h + 2k + c, in w[8h + 2k + c] */
            for (int h = 0; h < 2; h++) {
                const uint8x16_t q0 = vld1q_u8(x->qs + 32 * h), q1 = vld1q_u8(x->qs + 32 * h + 16);
                for (int k = 0; k < 4; k++) {
                    /* bits 2k of qs[32h + l], minus 4 where bit 4h + k of hmask[l] is clear */
                    const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * k));
                    const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << (4 * h + k)));
                    w[8 * h + 2 * k] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q0, sh), vdupq_n_u8(3))),
                                                vreinterpretq_s8_u8(vbicq_u8(four, vtstq_u8(hm0, bit))));
                    w[8 * h + 2 * k + 1] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q1, sh), vdupq_n_u8(3))),
                                                    vreinterpretq_s8_u8(vbicq_u8(four, vtstq_u8(hm1, bit))));
                }
            }
            for (int t = 0; t < nt; t++) {
                const block_q8_K *y = ROW_PTR(block_q8_K, vy, by, t) + b;
                int32x4_t i0 = vdupq_n_s32(0), i1 = i0;
                for (int g = 0; g < 16; g++) add_group(&i0, &i1, prod16(w[g], vld1q_s8(y->qs + 16 * g)), sc[g]);
                float_lanes(&lo[r][t], &hi[r][t], H2F(x->d) * y->d, i0, i1);
            }
        }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) s[r * ls + t] = lanes_seq8(0.0f, lo[r][t], hi[r][t]);
}
LEGACY_ENTRIES(dot_q3_K_neon, NEON)

/* Q4_K and Q6_K written once for nr weight rows × nt activation rows (as LEGACY): a super-block's weights unpacked
   once for all its tokens; the one-row and two-row kernels are the 1 × 1 and 2 × 1 cases, prompt processing's tile the
   K_TILE_ROWS × K_TILE_TOKENS one, and every (row, token) pair gets the one-row kernel's operations */
#define K_TILE_ROWS LEGACY_TILE_ROWS
#define K_TILE_TOKENS LEGACY_TILE_TOKENS
NEON INLINE void dot_q4_K_neon_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,
                                     size_t by, const int nr, const int nt) {
    TILE_LANES;
    TILE_SUMS(sum);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int64_t b = 0; b < n / QK_K; b++)
        for (int r = 0; r < nr; r++) {
            const block_q4_K *x = ROW_PTR(block_q4_K, vx, bx, r) + b;
            uint8_t sc[8], mn[8];
            tk_unpack_scales_k4(x->scales, sc, mn);
            int8x16_t w[16];  /* elements 64j + 16i .. + 15 in w[4j + i] */
            for (int j = 0; j < 4; j++) {
                const uint8x16_t q0 = vld1q_u8(x->qs + 32 * j), q1 = vld1q_u8(x->qs + 32 * j + 16);
                w[4 * j] = vreinterpretq_s8_u8(vandq_u8(q0, m4));
                w[4 * j + 1] = vreinterpretq_s8_u8(vandq_u8(q1, m4));
                w[4 * j + 2] = vreinterpretq_s8_u8(vshrq_n_u8(q0, 4));
                w[4 * j + 3] = vreinterpretq_s8_u8(vshrq_n_u8(q1, 4));
            }
            for (int t = 0; t < nt; t++) {
                const block_q8_K *y = ROW_PTR(block_q8_K, vy, by, t) + b;
                int summ = 0;
                for (int j = 0; j < 16; j++) summ += y->bsums[j] * mn[j / 2];
                int32x4_t i0 = vdupq_n_s32(0), i1 = i0;
                for (int j = 0; j < 4; j++) {
                    /* four products per lane: |a·q| <= 15·128, at most 7680 */
                    const int8_t *q8 = y->qs + 64 * j;
                    int16x8_t p = vaddq_s16(prod16(w[4 * j], vld1q_s8(q8)), prod16(w[4 * j + 1], vld1q_s8(q8 + 16)));
                    add_group(&i0, &i1, p, sc[2 * j]);
                    p = vaddq_s16(prod16(w[4 * j + 2], vld1q_s8(q8 + 32)), prod16(w[4 * j + 3], vld1q_s8(q8 + 48)));
                    add_group(&i0, &i1, p, sc[2 * j + 1]);
                }
                float_lanes(&lo[r][t], &hi[r][t], H2F(x->d) * y->d, i0, i1);
                sum[r][t] -= H2F(x->dmin) * y->d * (float)summ;
            }
        }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) s[r * ls + t] = lanes_seq8(sum[r][t], lo[r][t], hi[r][t]);
}

NEON INLINE void dot_q6_K_neon_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,
                                     size_t by, const int nr, const int nt) {
    TILE_LANES;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    const int8x16_t off = vdupq_n_s8(32);
    for (int64_t b = 0; b < n / QK_K; b++)
        for (int r = 0; r < nr; r++) {
            const block_q6_K *x = ROW_PTR(block_q6_K, vx, bx, r) + b;
            int8x16_t w[16];  /* elements 128h + 32k + 16c + (0..15), group 8h + 2k + c, in w[8h + 2k + c] */
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
                for (int c = 0; c < 2; c++) {
                    const uint8x16_t la = vld1q_u8(ql + 16 * c), lb = vld1q_u8(ql + 32 + 16 * c);
                    const uint8x16_t hb = vld1q_u8(qh + 16 * c);
                    const uint8x16_t e[4] = {
                        vorrq_u8(vandq_u8(la, m4), vshlq_n_u8(vandq_u8(hb, m3), 4)),
                        vorrq_u8(vandq_u8(lb, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4)),
                        vorrq_u8(vshrq_n_u8(la, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4)),
                        vorrq_u8(vshrq_n_u8(lb, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4)),
                    };
                    for (int k = 0; k < 4; k++) w[8 * h + 2 * k + c] = vsubq_s8(vreinterpretq_s8_u8(e[k]), off);
                }
            }
            for (int t = 0; t < nt; t++) {
                const block_q8_K *y = ROW_PTR(block_q8_K, vy, by, t) + b;
                int32x4_t i0 = vdupq_n_s32(0), i1 = i0;
                for (int h = 0; h < 2; h++)
                    for (int c = 0; c < 2; c++)
                        for (int k = 0; k < 4; k++) {
                            const int g = 8 * h + 2 * k + c;
                            add_group(&i0, &i1, prod16(w[g], vld1q_s8(y->qs + 128 * h + 32 * k + 16 * c)), x->scales[g]);
                        }
                float_lanes(&lo[r][t], &hi[r][t], H2F(x->d) * y->d, i0, i1);
            }
        }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) s[r * ls + t] = lanes_seq8(0.0f, lo[r][t], hi[r][t]);
}

#define K_ENTRIES(NAME) BLOCK_ENTRIES(NAME, NEON, K_TILE_ROWS, K_TILE_TOKENS)
K_ENTRIES(dot_q4_K_neon)
K_ENTRIES(dot_q6_K_neon)

/* ---------------------------------------------------------------------------------------------- float types */
/* 16 elements per step in four FMA accumulators per (row, token), each step's weights loaded once for the tile's
   tokens; the tail in float */

static inline float hsum4x4(float32x4_t a, float32x4_t b, float32x4_t c, float32x4_t d) {
    return vaddvq_f32(vaddq_f32(vaddq_f32(a, b), vaddq_f32(c, d)));
}

#define FLOAT_TILE_ROWS 2
#define FLOAT_TILE_TOKENS 2
#define FLOAT_DOT(NAME, T, LOAD, ONE)                                                                            \
    NEON INLINE void NAME##_block(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,      \
                                  size_t by, const int nr, const int nt) {                                      \
        float32x4_t acc[FLOAT_TILE_ROWS][FLOAT_TILE_TOKENS][4];                                                 \
        for (int r = 0; r < nr; r++)                                                                            \
            for (int t = 0; t < nt; t++)                                                                        \
                for (int k = 0; k < 4; k++) acc[r][t][k] = vdupq_n_f32(0.0f);                                   \
        int64_t i = 0;                                                                                          \
        for (; i + 16 <= n; i += 16) {                                                                          \
            float32x4_t w[FLOAT_TILE_ROWS][4];                                                                  \
            for (int r = 0; r < nr; r++)                                                                        \
                for (int k = 0; k < 4; k++) w[r][k] = LOAD(ROW_PTR(T, vx, bx, r) + i + 4 * k);                   \
            for (int t = 0; t < nt; t++)                                                                        \
                for (int k = 0; k < 4; k++) {                                                                   \
                    const float32x4_t a = LOAD(ROW_PTR(T, vy, by, t) + i + 4 * k);                               \
                    for (int r = 0; r < nr; r++) acc[r][t][k] = vfmaq_f32(acc[r][t][k], w[r][k], a);            \
                }                                                                                               \
        }                                                                                                       \
        for (int r = 0; r < nr; r++)                                                                            \
            for (int t = 0; t < nt; t++) {                                                                      \
                const T *x = ROW_PTR(T, vx, bx, r), *y = ROW_PTR(T, vy, by, t);                                  \
                float sum = hsum4x4(acc[r][t][0], acc[r][t][1], acc[r][t][2], acc[r][t][3]);                    \
                for (int64_t k = i; k < n; k++) sum += ONE(x[k]) * ONE(y[k]);                                   \
                s[r * ls + t] = sum;                                                                            \
            }                                                                                                   \
    }                                                                                                           \
    BLOCK_ENTRIES(NAME, NEON, FLOAT_TILE_ROWS, FLOAT_TILE_TOKENS)

static inline float32x4_t load_f16(const tk_half *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline float32x4_t load_bf16(const uint16_t *p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}
static inline float one_f32(float v) { return v; }
static inline float one_bf16(uint16_t v) { return tk_bf16_to_fp32(v); }

FLOAT_DOT(dot_f32_neon, float, vld1q_f32, one_f32)
FLOAT_DOT(dot_f16_neon, tk_half, load_f16, H2F)
FLOAT_DOT(dot_bf16_neon, uint16_t, load_bf16, one_bf16)

/* ---------------------------------------------------------------------------------------------- the table */

struct neon_dots { tk_vec_dot_fn neon, dot; tk_vec_dot2_fn neon2, dot2; };

#define BOTH(T) {dot_##T##_neon, dot_##T##_dot, dot_##T##_neon2, dot_##T##_dot2}
#define NEON_ONLY(T) {dot_##T##_neon, NULL, dot_##T##_neon2, NULL}

static const struct neon_dots NEON_DOTS[TK_TYPE_COUNT] = {
    [TK_F32] = NEON_ONLY(f32),   [TK_F16] = NEON_ONLY(f16),   [TK_BF16] = NEON_ONLY(bf16), [TK_Q4_0] = BOTH(q4_0),
    [TK_Q4_1] = BOTH(q4_1),      [TK_Q5_0] = BOTH(q5_0),      [TK_Q5_1] = BOTH(q5_1),      [TK_Q8_0] = BOTH(q8_0),
    [TK_Q2_K] = BOTH(q2_K),      [TK_Q3_K] = NEON_ONLY(q3_K), [TK_Q4_K] = NEON_ONLY(q4_K), [TK_Q5_K] = BOTH(q5_K),
    [TK_Q6_K] = NEON_ONLY(q6_K),
    /* quants_iq_neon.c, quants_ternary_neon.c: one row at a time */
    [TK_IQ4_NL] = {tk_vec_dot_iq4_nl_q8_0_neon, tk_vec_dot_iq4_nl_q8_0_dot, NULL, NULL},
    [TK_IQ4_XS] = {tk_vec_dot_iq4_xs_q8_K_neon, tk_vec_dot_iq4_xs_q8_K_dot, NULL, NULL},
    [TK_TQ1_0] = {tk_vec_dot_tq1_0_q8_K_neon, tk_vec_dot_tq1_0_q8_K_dot, NULL, NULL},
    [TK_TQ2_0] = {tk_vec_dot_tq2_0_q8_K_neon, tk_vec_dot_tq2_0_q8_K_dot, NULL, NULL},
    [TK_IQ1_S] = {tk_vec_dot_iq1_s_q8_K_neon, tk_vec_dot_iq1_s_q8_K_dot, NULL, NULL}, /* quants_iq1_neon.c */
    [TK_IQ1_M] = {tk_vec_dot_iq1_m_q8_K_neon, tk_vec_dot_iq1_m_q8_K_dot, NULL, NULL},
    [TK_IQ3_XXS] = {tk_vec_dot_iq3_xxs_q8_K_neon, tk_vec_dot_iq3_xxs_q8_K_dot, NULL, NULL}, /* quants_iq3_neon.c */
    [TK_IQ3_S] = {tk_vec_dot_iq3_s_q8_K_neon, tk_vec_dot_iq3_s_q8_K_dot, NULL, NULL},
    [TK_IQ2_XXS] = {tk_vec_dot_iq2_xxs_q8_K_neon, tk_vec_dot_iq2_xxs_q8_K_dot, NULL, NULL}, /* quants_iq2_neon.c */
    [TK_IQ2_XS] = {tk_vec_dot_iq2_xs_q8_K_neon, tk_vec_dot_iq2_xs_q8_K_dot, NULL, NULL},
    [TK_IQ2_S] = {tk_vec_dot_iq2_s_q8_K_neon, tk_vec_dot_iq2_s_q8_K_dot, NULL, NULL},
};

/* prompt processing's tiles: the legacy types', Q2_K's and Q5_K's at each level (the IQ and ternary types run their
   two-row kernels per token) */
#define LEGACY_GEMM(T, LEVEL)                                                                                   \
    static const struct tk_gemm tile_##T##_##LEVEL = {dot_##T##_##LEVEL##_tile, LEGACY_TILE_ROWS, LEGACY_TILE_TOKENS, \
                                                      NULL, 0, 0, NULL};
#define LEGACY_GEMMS(T) LEGACY_GEMM(T, neon) LEGACY_GEMM(T, dot)
LEGACY_GEMMS(q4_0)
LEGACY_GEMMS(q4_1)
LEGACY_GEMMS(q5_0)
LEGACY_GEMMS(q5_1)
LEGACY_GEMMS(q8_0)

LEGACY_GEMMS(q2_K)
LEGACY_GEMMS(q5_K)
LEGACY_GEMM(q3_K, neon)

/* Q3_K's, Q4_K's and Q6_K's at every level (their lanes keep the NEON kernels at the dotprod level) */
static const struct tk_gemm tile_q4_K_neon = {dot_q4_K_neon_tile, K_TILE_ROWS, K_TILE_TOKENS, NULL, 0, 0, NULL};
static const struct tk_gemm tile_q6_K_neon = {dot_q6_K_neon_tile, K_TILE_ROWS, K_TILE_TOKENS, NULL, 0, 0, NULL};

/* the float types' at every level */
#define FLOAT_GEMM(T)                                                                                             \
    static const struct tk_gemm tile_##T##_neon = {dot_##T##_neon_tile, FLOAT_TILE_ROWS, FLOAT_TILE_TOKENS, NULL, 0, \
                                                   0, NULL};
FLOAT_GEMM(f32)
FLOAT_GEMM(f16)
FLOAT_GEMM(bf16)

const struct tk_gemm *tk_gemm_neon(int wtype, int level) {
    if (level < 1) return NULL;
    const struct tk_gemm *mm = level >= 3 ? tk_gemm_i8mm(wtype) : NULL;
    if (mm) return mm;
    switch (wtype) {
    case TK_Q4_0: return level >= 2 ? &tile_q4_0_dot : &tile_q4_0_neon;
    case TK_Q4_1: return level >= 2 ? &tile_q4_1_dot : &tile_q4_1_neon;
    case TK_Q5_0: return level >= 2 ? &tile_q5_0_dot : &tile_q5_0_neon;
    case TK_Q5_1: return level >= 2 ? &tile_q5_1_dot : &tile_q5_1_neon;
    case TK_Q8_0: return level >= 2 ? &tile_q8_0_dot : &tile_q8_0_neon;
    case TK_Q2_K: return level >= 2 ? &tile_q2_K_dot : &tile_q2_K_neon;
    case TK_Q3_K: return &tile_q3_K_neon;
    case TK_Q4_K: return &tile_q4_K_neon;
    case TK_Q5_K: return level >= 2 ? &tile_q5_K_dot : &tile_q5_K_neon;
    case TK_Q6_K: return &tile_q6_K_neon;
    case TK_F32: return &tile_f32_neon;
    case TK_F16: return &tile_f16_neon;
    case TK_BF16: return &tile_bf16_neon;
    default: return NULL;
    }
}

tk_vec_dot_fn tk_vec_dot_neon(int wtype, int level) {
    if (wtype < 0 || wtype >= TK_TYPE_COUNT || level < 1) return NULL;
    const struct neon_dots *d = &NEON_DOTS[wtype];
    return level >= 2 && d->dot ? d->dot : d->neon;
}

tk_vec_dot2_fn tk_vec_dot2_neon(int wtype, int level) {
    if (wtype < 0 || wtype >= TK_TYPE_COUNT || level < 1) return NULL;
    const struct neon_dots *d = &NEON_DOTS[wtype];
    return level >= 2 && d->dot2 ? d->dot2 : d->neon2;
}

#endif
