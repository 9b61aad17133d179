/* ARM64 i8mm (FEAT_I8MM: smmla, a 2 × 8 by 8 × 2 int8 matrix product into four int32 lanes) tiles for prompt
   processing, chosen at level 3 (see tk_arm_level); the one-token kernels at that level are dotprod's.

   Q4_0 in dot.c's block-sum order: per block and (row, token) the exact integer Σ (q - 8)·y, then
   acc = fmaf(Σ, d_x·d_y, acc), blocks in order. smmla gives two rows × two tokens' sums of eight products at once, and
   four of them (the block's four groups of eight elements) the four exact block sums, which meet the scalar kernel's
   fused multiply-add lane by lane: bit for bit the one-token kernels. A tile is 4 rows × 4 tokens: per block, 16 smmla
   for 512 products. */
#include "quants.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#if defined(__clang__)
#define I8MM __attribute__((target("i8mm")))
#else
#define I8MM __attribute__((target("arch=armv8.2-a+i8mm")))
#endif

#define I8MM_ROWS 4
#define I8MM_TOKENS 4

/* acc + (2 × 8 matrix a) · (2 × 8 matrix b)ᵀ: lanes (a0·b0, a0·b1, a1·b0, a1·b1) */
I8MM static inline int32x4_t smmla(int32x4_t acc, int8x16_t a, int8x16_t b) {
    __asm__(".arch_extension i8mm\n\tsmmla %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}

/* the block's 32 weights q - 8 of rows x0 and x1 as four 2 × 8 matrices (elements 8c..8c+7 of each row) */
I8MM static inline void q4_0_pairs(const block_q4_0 *x0, const block_q4_0 *x1, int8x16_t m[4]) {
    const uint8x16_t a = vld1q_u8(x0->qs), b = vld1q_u8(x1->qs), lo = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(8);
    const int8x16_t a0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(a, lo)), eight);
    const int8x16_t a1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(a, 4)), eight);
    const int8x16_t b0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, lo)), eight);
    const int8x16_t b1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight);
    m[0] = vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a0), vreinterpretq_s64_s8(b0)));
    m[1] = vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a0), vreinterpretq_s64_s8(b0)));
    m[2] = vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a1), vreinterpretq_s64_s8(b1)));
    m[3] = vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a1), vreinterpretq_s64_s8(b1)));
}

/* the block's 32 activations of tokens y0 and y1 as four 2 × 8 matrices */
I8MM static inline void q8_0_pairs(const block_q8_0 *y0, const block_q8_0 *y1, int8x16_t m[4]) {
    const int64x2_t a0 = vreinterpretq_s64_s8(vld1q_s8(y0->qs)), a1 = vreinterpretq_s64_s8(vld1q_s8(y0->qs + 16));
    const int64x2_t b0 = vreinterpretq_s64_s8(vld1q_s8(y1->qs)), b1 = vreinterpretq_s64_s8(vld1q_s8(y1->qs + 16));
    m[0] = vreinterpretq_s8_s64(vzip1q_s64(a0, b0));
    m[1] = vreinterpretq_s8_s64(vzip2q_s64(a0, b0));
    m[2] = vreinterpretq_s8_s64(vzip1q_s64(a1, b1));
    m[3] = vreinterpretq_s8_s64(vzip2q_s64(a1, b1));
}

#define ROW(T, v, stride, r) ((const T *)((const char *)(v) + (size_t)(r) * (stride)))

/* s[r·ls + t] = row r of vx · token t of vy (Q8_0) for a tile of I8MM_ROWS × I8MM_TOKENS */
I8MM static void tile_q4_0_i8mm(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {
    float32x4_t acc[I8MM_ROWS / 2][I8MM_TOKENS / 2];
    for (int i = 0; i < I8MM_ROWS / 2; i++)
        for (int j = 0; j < I8MM_TOKENS / 2; j++) acc[i][j] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < n / QK; b++) {
        int8x16_t w[I8MM_ROWS / 2][4], a[I8MM_TOKENS / 2][4];
        float dx[I8MM_ROWS], dy[I8MM_TOKENS];
        for (int i = 0; i < I8MM_ROWS / 2; i++) {
            const block_q4_0 *x0 = ROW(block_q4_0, vx, bx, 2 * i) + b, *x1 = ROW(block_q4_0, vx, bx, 2 * i + 1) + b;
            q4_0_pairs(x0, x1, w[i]);
            dx[2 * i] = tk_fp16_table[x0->d];
            dx[2 * i + 1] = tk_fp16_table[x1->d];
        }
        for (int j = 0; j < I8MM_TOKENS / 2; j++) {
            const block_q8_0 *y0 = ROW(block_q8_0, vy, by, 2 * j) + b, *y1 = ROW(block_q8_0, vy, by, 2 * j + 1) + b;
            q8_0_pairs(y0, y1, a[j]);
            dy[2 * j] = tk_fp16_table[y0->d];
            dy[2 * j + 1] = tk_fp16_table[y1->d];
        }
        for (int i = 0; i < I8MM_ROWS / 2; i++)
            for (int j = 0; j < I8MM_TOKENS / 2; j++) {
                int32x4_t sum = vdupq_n_s32(0);
                for (int c = 0; c < 4; c++) sum = smmla(sum, w[i][c], a[j][c]);
                /* lanes (row 2i, token 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1) */
                const float32x4_t dxv = {dx[2 * i], dx[2 * i], dx[2 * i + 1], dx[2 * i + 1]};
                const float32x4_t dyv = {dy[2 * j], dy[2 * j + 1], dy[2 * j], dy[2 * j + 1]};
                acc[i][j] = vfmaq_f32(acc[i][j], vcvtq_f32_s32(sum), vmulq_f32(dxv, dyv));
            }
    }
    for (int i = 0; i < I8MM_ROWS / 2; i++)
        for (int j = 0; j < I8MM_TOKENS / 2; j++) {
            s[(2 * i) * ls + 2 * j] = vgetq_lane_f32(acc[i][j], 0);
            s[(2 * i) * ls + 2 * j + 1] = vgetq_lane_f32(acc[i][j], 1);
            s[(2 * i + 1) * ls + 2 * j] = vgetq_lane_f32(acc[i][j], 2);
            s[(2 * i + 1) * ls + 2 * j + 1] = vgetq_lane_f32(acc[i][j], 3);
        }
}

static const struct tk_gemm tile_q4_0_i8mm_gemm = {tile_q4_0_i8mm, I8MM_ROWS, I8MM_TOKENS, NULL, 0, 0, NULL, NULL};

const struct tk_gemm *tk_gemm_i8mm(int wtype) {
    switch (wtype) {
    case TK_Q4_0: return &tile_q4_0_i8mm_gemm;
    default: return NULL;
    }
}
#endif
