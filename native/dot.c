/* Matrix products of the runtime: y = x · Wᵀ with W stored row-major in any type of the table, x float32.

   As ggml's CPU backend does, the activations are first converted, once per call, to the weight type's dot-product
   partner (its vec_dot_type: Q8_0, Q8_1, Q8_K, F16, BF16 or F32 itself), then every output is one vec_dot of a
   weight row with an activation row. The scalar vec_dots below follow ggml's reference (ggml_vec_dot_*_generic):
   exact integer sums inside each block, then the same float operations in the same order, so results track
   llama.cpp closely (the legacy types follow ggml's AVX2 order instead, so their scalar and SIMD results are equal). AVX2 versions (dot_avx2.c) are used when tk_use_simd(); they agree within float rounding
   (their float sums run in vector lanes). On ARM64 the NEON/dotprod versions (dot_neon.c) give the scalar bits for
   every quantized type. */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "quants.h"
#include "quants_iq2.h"
#include "quants_iq1.h"
#include "quants_iq3.h"

#if defined(__x86_64__) || defined(__i386__)
#define SIMD(f) f
#else
#define SIMD(f) NULL
#endif

/* inline conversions (same results as tk_fp16_to_fp32 / tk_bf16_to_fp32) */
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float h2f(tk_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline float bf2f(uint16_t b) { return bits_f32((uint32_t)b << 16); }

/* Every fp16 value as f32, filled when the library loads: the block scales of the legacy types are converted
   with one load, as ggml does (ggml_table_f32_f16). */
float tk_fp16_table[1 << 16];

__attribute__((constructor)) static void fill_fp16_table(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) tk_fp16_table[i] = h2f((tk_half)i);
}

#define H2F(h) tk_fp16_table[(tk_half)(h)]

/* ---------------------------------------------------------------------------------------------- float types */
/* ggml's scalar path: products rounded to float, summed in double */

static void dot_f32(int64_t n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * y[i]);
    *s = (float)sum;
}

static void dot_f16(int64_t n, float *s, const void *vx, const void *vy) {
    const tk_half *x = vx, *y = vy;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)(H2F(x[i]) * H2F(y[i]));
    *s = (float)sum;
}

static void dot_bf16(int64_t n, float *s, const void *vx, const void *vy) {
    const uint16_t *x = vx, *y = vy;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)(bf2f(x[i]) * bf2f(y[i]));
    *s = (float)sum;
}

/* ---------------------------------------------------------------------------------------------- legacy types */
/* The float order of ggml's AVX2 kernels (which dot_avx2.c has too), in scalar code: per block, eight integer sums of
   four consecutive products, each added into its own float lane with one fused multiply-add by d_x·d_y; the lanes
   summed at the end as the vector code does. Scalar and SIMD paths thus give the same bits. */
static inline void lanes_fma(float acc[8], float d, const int w[QK], const int8_t *a) {
    for (int l = 0; l < 8; l++) {
        const int isum = w[4 * l] * a[4 * l] + w[4 * l + 1] * a[4 * l + 1] + w[4 * l + 2] * a[4 * l + 2] +
                         w[4 * l + 3] * a[4 * l + 3];
        acc[l] = fmaf(d, (float)isum, acc[l]);
    }
}

/* block weights in element order: low nibbles are elements 0..15, high nibbles 16..31; the fifth bit from qh */
static inline void nibbles(const uint8_t qs[QK / 2], const uint8_t *qh, int offset, int w[QK]) {
    uint32_t h = 0;
    if (qh) memcpy(&h, qh, 4);
    for (int j = 0; j < QK / 2; j++) {
        w[j] = (int)((qs[j] & 0x0F) | (((h >> j) & 1) << 4)) - offset;
        w[j + QK / 2] = (int)((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4)) - offset;
    }
}

#define LEGACY_SCALAR(NAME, XT, YT, WEIGHTS, MIN)                                                \
    static void NAME(int64_t n, float *s, const void *vx, const void *vy) {                     \
        const XT *x = vx;                                                                        \
        const YT *y = vy;                                                                        \
        float acc[8] = {0}, summ = 0;                                                            \
        int w[QK];                                                                               \
        for (int64_t b = 0; b < n / QK; b++) {                                                   \
            WEIGHTS;                                                                             \
            lanes_fma(acc, H2F(x[b].d) * H2F(y[b].d), w, y[b].qs);                               \
            MIN;                                                                                 \
        }                                                                                        \
        *s = tk_lanes_sum8(acc) + summ;                                                              \
    }

/* Q4_0 in block-sum order, llama.cpp's own for Q4_0 on x86 (its repacked gemv/gemm, ggml_gemv_q4_0_8x8_q8_0, which
   its CPU backend runs for Q4_0 weights on AVX2/AVX512 CPUs): per block the exact integer Σ (q - 8)·y, then one fused
   multiply-add acc = fma(sum, d_x·d_y, acc), blocks in order from acc = 0. One float step per block (not eight) is
   what lets the tiles keep vpdpbusd busy; every SIMD Q4_0 kernel and tile gives these bits. */
static void dot_q4_0_q8_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc = 0;
    int w[QK];
    for (int64_t b = 0; b < n / QK; b++) {
        nibbles(x[b].qs, NULL, 8, w);
        int sum = 0;
        for (int j = 0; j < QK; j++) sum += w[j] * y[b].qs[j];
        acc = fmaf((float)sum, H2F(x[b].d) * H2F(y[b].d), acc);
    }
    *s = acc;
}

LEGACY_SCALAR(dot_q4_1_q8_1, block_q4_1, block_q8_1, nibbles(x[b].qs, NULL, 0, w),
              summ += H2F(x[b].m) * H2F(y[b].s))
LEGACY_SCALAR(dot_q5_0_q8_0, block_q5_0, block_q8_0, nibbles(x[b].qs, x[b].qh, 16, w), (void)0)
LEGACY_SCALAR(dot_q5_1_q8_1, block_q5_1, block_q8_1, nibbles(x[b].qs, x[b].qh, 0, w),
              summ += H2F(x[b].m) * H2F(y[b].s))
LEGACY_SCALAR(dot_q8_0_q8_0, block_q8_0, block_q8_0, for (int j = 0; j < QK; j++) w[j] = x[b].qs[j], (void)0)

/* ---------------------------------------------------------------------------------------------- k-quants */

/* The 8 six-bit scales and 8 mins of a Q4_K/Q5_K super-block. */
void tk_unpack_scales_k4(const uint8_t q[K_SCALE_SIZE], uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
        mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
}

/* The 16 signed scales (6 bits minus 32) of a Q3_K super-block. */
void tk_unpack_scales_q3_K(const uint8_t q[12], int8_t sc[16]) {
    for (int j = 0; j < 16; j++) {
        int low = j < 8 ? q[j] & 0x0F : q[j - 8] >> 4;
        int high = (q[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        sc[j] = (int8_t)((low | (high << 4)) - 32);
    }
}

/* ggml's k-quant reference sums products in 8 integer lanes (element index mod 8), weighted by the group's scale,
   then adds d·lane to 8 float lanes per super-block; the lanes are added up at the end. The helper takes the
   super-block's quants as int8 (a) with one scale per group of `group` elements. */
static inline void lanes_add(float sums[8], float d, const int8_t *a, const int8_t *q8, const int *scale, int group) {
    int32_t lane[8] = {0};
    for (int g = 0; g < QK_K / group; g++) {
        const int sc = scale[g];
        for (int l = 0; l < group; l++) lane[l & 7] += sc * (a[g * group + l] * q8[g * group + l]);
    }
    for (int l = 0; l < 8; l++) sums[l] += d * (float)lane[l];
}

/* Q2_K in the AVX2 kernel's order: the mins into 8 float lanes (pairs of the 16 groups), then per lane the scaled
   sums of bytes 4l..4l+3 of every 32-quant row (scales of the low/high half of the row), one FMA each. */
static void dot_q2_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0};
    for (int64_t b = 0; b < n / QK_K; b++) {
        const uint8_t *sc = x[b].scales;
        const float dall = y[b].d * h2f(x[b].d), dmin = y[b].d * h2f(x[b].dmin);
        for (int l = 0; l < 8; l++) {
            const int summ = y[b].bsums[2 * l] * (sc[2 * l] >> 4) + y[b].bsums[2 * l + 1] * (sc[2 * l + 1] >> 4);
            acc[l] = fmaf(-dmin, (float)summ, acc[l]);
        }
        int sumi[8] = {0};
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < 4; j++) {
                const int m = 4 * k + j;
                const int8_t *q8 = y[b].qs + 128 * k + 32 * j;
                for (int i = 0; i < 32; i++)
                    sumi[i / 4] += (sc[2 * m + (i >= 16)] & 0x0F) * ((x[b].qs[32 * k + i] >> (2 * j)) & 3) * q8[i];
            }
        for (int l = 0; l < 8; l++) acc[l] = fmaf(dall, (float)sumi[l], acc[l]);
    }
    *s = tk_lanes_sum8(acc);
}

static void dot_q3_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    float sums[8] = {0};
    int8_t a[QK_K], sc8[16];
    int sc[16];
    for (int64_t b = 0; b < n / QK_K; b++) {
        for (int e = 0; e < QK_K; e++) {
            const int l = e % 32, shift = 2 * ((e / 32) % 4);
            const int q = (x[b].qs[(e / 128) * 32 + l] >> shift) & 3;
            a[e] = (int8_t)(q - ((x[b].hmask[l] >> (e / 32)) & 1 ? 0 : 4));
        }
        tk_unpack_scales_q3_K(x[b].scales, sc8);
        for (int j = 0; j < 16; j++) sc[j] = sc8[j];
        lanes_add(sums, h2f(x[b].d) * y[b].d, a, y[b].qs, sc, 16);
    }
    float sum = 0;
    for (int l = 0; l < 8; l++) sum += sums[l];
    *s = sum;
}

/* Q4_K and Q5_K: the quants (0..15 or 0..31) come in by `a`; mins through the activations' 16-element sums. */
static inline void k4_superblock(float sums[8], float *sum, const int8_t *a, tk_half d, tk_half dmin,
                                 const uint8_t scales[K_SCALE_SIZE], const block_q8_K *y) {
    uint8_t sc8[8], mn[8];
    tk_unpack_scales_k4(scales, sc8, mn);
    int summ = 0;
    for (int j = 0; j < 16; j++) summ += y->bsums[j] * mn[j / 2];
    int sc[8];
    for (int j = 0; j < 8; j++) sc[j] = sc8[j];
    lanes_add(sums, h2f(d) * y->d, a, y->qs, sc, 32);
    *sum -= h2f(dmin) * y->d * (float)summ;
}

static void dot_q4_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    float sums[8] = {0}, sum = 0;
    int8_t a[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++) {
        for (int j = 0; j < QK_K / 64; j++)
            for (int l = 0; l < 32; l++) {
                a[64 * j + l] = (int8_t)(x[b].qs[32 * j + l] & 0x0F);
                a[64 * j + 32 + l] = (int8_t)(x[b].qs[32 * j + l] >> 4);
            }
        k4_superblock(sums, &sum, a, x[b].d, x[b].dmin, x[b].scales, &y[b]);
    }
    for (int l = 0; l < 8; l++) sum += sums[l];
    *s = sum;
}

/* Q5_K in the AVX2 kernel's order: per lane l, Σ over the 8 sub-blocks of scale · (bytes 4l..4l+3), one FMA per
   super-block; the mins summed exactly and added in one float. */
static void dot_q5_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0}, summs = 0;
    int8_t a[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++) {
        for (int j = 0; j < QK_K / 64; j++)
            for (int l = 0; l < 32; l++) {
                const uint8_t h = x[b].qh[l];
                a[64 * j + l] = (int8_t)((x[b].qs[32 * j + l] & 0x0F) | (((h >> (2 * j)) & 1) << 4));
                a[64 * j + 32 + l] = (int8_t)((x[b].qs[32 * j + l] >> 4) | (((h >> (2 * j + 1)) & 1) << 4));
            }
        uint8_t sc[8], mn[8];
        tk_unpack_scales_k4(x[b].scales, sc, mn);
        const float d = y[b].d * h2f(x[b].d), dmin = y[b].d * h2f(x[b].dmin);
        int summ = 0;
        for (int j = 0; j < 16; j++) summ += y[b].bsums[j] * mn[j / 2];
        summs += -dmin * (float)summ;
        int sumi[8] = {0};
        for (int sb = 0; sb < 8; sb++)
            for (int i = 0; i < 32; i++) sumi[i / 4] += sc[sb] * a[32 * sb + i] * y[b].qs[32 * sb + i];
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)sumi[l], acc[l]);
    }
    *s = tk_lanes_sum8(acc) + summs;
}

static void dot_q6_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    float sums[8] = {0};
    int8_t a[QK_K];
    int sc[16];
    for (int64_t b = 0; b < n / QK_K; b++) {
        const uint8_t *ql = x[b].ql, *qh = x[b].qh;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32) {
            int8_t *o = a + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        for (int j = 0; j < 16; j++) sc[j] = x[b].scales[j];
        lanes_add(sums, h2f(x[b].d) * y[b].d, a, y[b].qs, sc, 16);
    }
    float sum = 0;
    for (int l = 0; l < 8; l++) sum += sums[l];
    *s = sum;
}

/* ---------------------------------------------------------------------------------------------- the table */

#define DOT(id, at, f, fs) [id] = {at, f, fs, NULL, NULL}
#define DOT2(id, at, f, fs, f2, f2v) [id] = {at, f, fs, SIMD(f2), SIMD(f2v)}

static const struct tk_dot_traits DOTS[TK_TYPE_COUNT] = {
    DOT(TK_F32, TK_F32, dot_f32, SIMD(tk_vec_dot_f32_avx2)),
    DOT2(TK_F16, TK_F16, dot_f16, SIMD(tk_vec_dot_f16_avx2), tk_vec_dot2_f16_avx2, NULL),
    DOT2(TK_BF16, TK_BF16, dot_bf16, SIMD(tk_vec_dot_bf16_avx2), tk_vec_dot2_bf16_avx2, NULL),
    DOT2(TK_Q4_0, TK_Q8_0, dot_q4_0_q8_0, SIMD(tk_vec_dot_q4_0_q8_0_avx2), tk_vec_dot2_q4_0_q8_0_avx2,
         tk_vec_dot2_q4_0_q8_0_vnni),
    DOT(TK_Q4_1, TK_Q8_1, dot_q4_1_q8_1, SIMD(tk_vec_dot_q4_1_q8_1_avx2)),
    DOT(TK_Q5_0, TK_Q8_0, dot_q5_0_q8_0, SIMD(tk_vec_dot_q5_0_q8_0_avx2)),
    DOT(TK_Q5_1, TK_Q8_1, dot_q5_1_q8_1, SIMD(tk_vec_dot_q5_1_q8_1_avx2)),
    DOT2(TK_Q8_0, TK_Q8_0, dot_q8_0_q8_0, SIMD(tk_vec_dot_q8_0_q8_0_avx2), tk_vec_dot2_q8_0_q8_0_avx2,
         tk_vec_dot2_q8_0_q8_0_vnni),
    DOT(TK_Q2_K, TK_Q8_K, dot_q2_K_q8_K, SIMD(tk_vec_dot_q2_K_q8_K_avx2)),
    DOT(TK_Q3_K, TK_Q8_K, dot_q3_K_q8_K, SIMD(tk_vec_dot_q3_K_q8_K_avx2)),
    DOT2(TK_Q4_K, TK_Q8_K, dot_q4_K_q8_K, SIMD(tk_vec_dot_q4_K_q8_K_avx2), tk_vec_dot2_q4_K_q8_K_avx2, NULL),
    DOT(TK_Q5_K, TK_Q8_K, dot_q5_K_q8_K, SIMD(tk_vec_dot_q5_K_q8_K_avx2)),
    DOT2(TK_Q6_K, TK_Q8_K, dot_q6_K_q8_K, SIMD(tk_vec_dot_q6_K_q8_K_avx2), tk_vec_dot2_q6_K_q8_K_avx2, NULL),
    DOT(TK_IQ3_XXS, TK_Q8_K, tk_vec_dot_iq3_xxs_q8_K, SIMD(tk_vec_dot_iq3_xxs_q8_K_avx2)),
    DOT(TK_IQ3_S, TK_Q8_K, tk_vec_dot_iq3_s_q8_K, SIMD(tk_vec_dot_iq3_s_q8_K_avx2)),
    DOT(TK_IQ1_S, TK_Q8_K, tk_vec_dot_iq1_s_q8_K, SIMD(tk_vec_dot_iq1_s_q8_K_avx2)),
    DOT(TK_IQ1_M, TK_Q8_K, tk_vec_dot_iq1_m_q8_K, SIMD(tk_vec_dot_iq1_m_q8_K_avx2)),
    DOT(TK_IQ2_XXS, TK_Q8_K, tk_vec_dot_iq2_xxs_q8_K, SIMD(tk_vec_dot_iq2_xxs_q8_K_avx2)),
    DOT(TK_IQ2_XS, TK_Q8_K, tk_vec_dot_iq2_xs_q8_K, SIMD(tk_vec_dot_iq2_xs_q8_K_avx2)),
    DOT(TK_IQ2_S, TK_Q8_K, tk_vec_dot_iq2_s_q8_K, SIMD(tk_vec_dot_iq2_s_q8_K_avx2)),
    DOT(TK_IQ4_NL, TK_Q8_0, tk_vec_dot_iq4_nl_q8_0, SIMD(tk_vec_dot_iq4_nl_q8_0_avx2)),
    DOT(TK_IQ4_XS, TK_Q8_K, tk_vec_dot_iq4_xs_q8_K, SIMD(tk_vec_dot_iq4_xs_q8_K_avx2)),
    DOT(TK_TQ1_0, TK_Q8_K, tk_vec_dot_tq1_0_q8_K, SIMD(tk_vec_dot_tq1_0_q8_K_avx2)),
    DOT(TK_TQ2_0, TK_Q8_K, tk_vec_dot_tq2_0_q8_K, SIMD(tk_vec_dot_tq2_0_q8_K_avx2)),
};

const struct tk_dot_traits *tk_dot_traits(int type) {
    if (type < 0 || type >= TK_TYPE_COUNT || DOTS[type].vec_dot == NULL) return NULL;
    return &DOTS[type];
}

tk_vec_dot_fn tk_vec_dot(int type) {
    const struct tk_dot_traits *t = tk_dot_traits(type);
    if (!t) return NULL;
#if defined(__aarch64__)
    const tk_vec_dot_fn neon = tk_use_simd() ? tk_vec_dot_neon(type, tk_arm_level()) : NULL;
    if (neon) return neon;
#endif
#if defined(__x86_64__) || defined(__i386__)
    const tk_vec_dot_fn zmm = tk_use_avx512() ? tk_vec_dot_avx512(type) : NULL;
    if (zmm) return zmm;
#endif
    return t->vec_dot_simd && tk_use_simd() ? t->vec_dot_simd : t->vec_dot;
}

tk_vec_dot2_fn tk_vec_dot2(int type) {
    const struct tk_dot_traits *t = tk_dot_traits(type);
    if (!t || !tk_use_simd()) return NULL;
#if defined(__aarch64__)
    return tk_vec_dot2_neon(type, tk_arm_level());
#endif
#if defined(__x86_64__) || defined(__i386__)
    const tk_vec_dot2_fn zmm = tk_use_avx512() ? tk_vec_dot2_avx512(type) : NULL;
    if (zmm) return zmm;
#endif
    return t->vec_dot2_vnni && tk_use_vnni() ? t->vec_dot2_vnni : t->vec_dot2_simd;
}

const struct tk_gemm *tk_gemm(int type) {
#if defined(__x86_64__) || defined(__i386__)
    if (!tk_use_simd()) return NULL;
    return tk_gemm_x86(type, tk_use_avx512() ? 2 : tk_use_vnni() ? 1 : 0);
#elif defined(__aarch64__)
    return tk_use_simd() ? tk_gemm_neon(type, tk_arm_level()) : NULL;
#else
    (void)type;
    return NULL;
#endif
}

/* Activations into Q8_0 / Q8_1 as llama.cpp's CPU backend does it (its x86 from_float, not the file quantizer):
   id = 127/amax and round half to even. The file quantizers (quants_legacy.c) use 1/d and roundf; on models that
   amplify activation rounding the difference shows, so the runtime follows the engine it is compared with. */
/* One block: returns the fp32 scale d (stored as fp16 by the callers) and the sum of the quants. */
static float quantize_act_q8(const float *x, int8_t qs[QK], int *sum) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.f, id = amax != 0.0f ? 127.f / amax : 0.0f;
    int s = 0;
    for (int j = 0; j < QK; j++) {
        qs[j] = (int8_t)nearbyintf(x[j] * id);
        s += qs[j];
    }
    *sum = s;
    return d;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
/* quantize_act_q8 eight lanes at a time, the same bits: the max of |x| is exact in any order (a NaN skipped, as fmaxf
   skips it), x·id rounded half to even by the conversion (the default rounding mode, as nearbyintf), the sum exact */
__attribute__((target("avx2,fma"))) static float quantize_act_q8_avx2(const float *x, int8_t qs[QK], int *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_loadu_ps(x + 8 * j);
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v[j]), m);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const float d = amax / 127.f, id = amax != 0.0f ? 127.f / amax : 0.0f;
    __m256i q[4], s = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], _mm256_set1_ps(id)));
        /* a NaN product (a NaN or infinite x) converts to INT_MIN, whose low byte the scalar cast keeps: 0 */
        q[j] = _mm256_andnot_si256(_mm256_cmpeq_epi32(q[j], _mm256_set1_epi32(INT32_MIN)), q[j]);
        s = _mm256_add_epi32(s, q[j]);
    }
    /* 32 int32 → 32 int8 in order: the packs interleave 128-bit lanes, the permutation puts them back */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)qs, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    *sum = _mm_cvtsi128_si32(t);
    return d;
}
#endif

typedef float (*act_q8_fn)(const float *x, int8_t qs[QK], int *sum);

static act_q8_fn act_q8(void) {
#if defined(__x86_64__) || defined(__i386__)
    if (tk_use_simd()) return quantize_act_q8_avx2;
#endif
    return quantize_act_q8;
}

static void quantize_act_q8_0(const float *x, void *vy, int64_t k) {
    block_q8_0 *y = vy;
    const act_q8_fn q8 = act_q8();
    int sum;
    for (int64_t i = 0; i < k / QK; i++) y[i].d = tk_fp32_to_fp16(q8(x + i * QK, y[i].qs, &sum));
}

static void quantize_act_q8_1(const float *x, void *vy, int64_t k) {
    block_q8_1 *y = vy;
    const act_q8_fn q8 = act_q8();
    int sum;
    for (int64_t i = 0; i < k / QK; i++) {
        const float d = q8(x + i * QK, y[i].qs, &sum);
        y[i].d = tk_fp32_to_fp16(d);
        y[i].s = tk_fp32_to_fp16(d * (float)sum);
    }
}

/* qs[32s + 4l + i] of the Q8_KX block = qs[32l + 4s + i] of the Q8_K one (the same permutation both ways) */
static void swap_sub_blocks(const int8_t *src, int8_t *dst) {
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 8; l++) memcpy(dst + 32 * s + 4 * l, src + 32 * l + 4 * s, 4);
}

/* sub-blocks 1 <-> 2 and 5 <-> 6 of the Q8_K block: the Q8_KP one (the same permutation both ways) */
static void pair_sub_blocks(const int8_t *src, int8_t *dst) {
    static const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int l = 0; l < 8; l++) memcpy(dst + 32 * l, src + 32 * order[l], 32);
}

typedef void (*reorder_fn)(const int8_t *src, int8_t *dst);

/* Q8_K blocks with their quants reordered and yb[l] = d · (sum of sub-block l's quants) in place of bsums */
static void quantize_q8_K_reordered(const float *x, block_q8_KX *y, int64_t k, reorder_fn reorder) {
    for (int64_t b = 0; b < k / QK_K; b++) {
        block_q8_K t;
        tk_convert_activation_row(TK_Q8_K, x + b * QK_K, &t, QK_K);
        y[b].d = t.d;
        reorder(t.qs, y[b].qs);
        for (int l = 0; l < 8; l++) y[b].yb[l] = t.d * (float)(t.bsums[2 * l] + t.bsums[2 * l + 1]);
    }
}

static void dequantize_q8_K_reordered(const block_q8_KX *x, float *y, int64_t k, reorder_fn reorder) {
    for (int64_t b = 0; b < k / QK_K; b++) {
        int8_t q[QK_K];
        reorder(x[b].qs, q);
        for (int i = 0; i < QK_K; i++) y[b * QK_K + i] = x[b].d * q[i];
    }
}

void tk_quantize_row_q8_KX(const float *x, void *vy, int64_t k) { quantize_q8_K_reordered(x, vy, k, swap_sub_blocks); }
void tk_dequantize_row_q8_KX(const void *vx, float *y, int64_t k) {
    dequantize_q8_K_reordered(vx, y, k, swap_sub_blocks);
}
void tk_quantize_row_q8_KP(const float *x, void *vy, int64_t k) { quantize_q8_K_reordered(x, vy, k, pair_sub_blocks); }
void tk_dequantize_row_q8_KP(const void *vx, float *y, int64_t k) {
    dequantize_q8_K_reordered(vx, y, k, pair_sub_blocks);
}

void tk_quantize_row_q8_K16(const float *x, void *vy, int64_t k) {
    block_q8_K16 *y = vy;
    for (int64_t b = 0; b < k / QK_K; b++) {
        block_q8_K t;
        tk_convert_activation_row(TK_Q8_K, x + b * QK_K, &t, QK_K);
        y[b].d = t.d;
        for (int i = 0; i < QK_K; i++) y[b].qs[i] = t.qs[i];
    }
}
void tk_dequantize_row_q8_K16(const void *vx, float *y, int64_t k) {
    const block_q8_K16 *x = vx;
    for (int64_t b = 0; b < k / QK_K; b++)
        for (int i = 0; i < QK_K; i++) y[b * QK_K + i] = x[b].d * x[b].qs[i];
}

void tk_quantize_row_q8_0s(const float *x, void *vy, int64_t k) {
    block_q8_0s *y = vy;
    for (int64_t b = 0; b < k / QK; b++) {
        block_q8_0 t;
        quantize_act_q8_0(x + b * QK, &t, QK);
        y[b].d = tk_fp16_table[t.d];
        memcpy(y[b].qs, t.qs, QK);
        for (int j = 0; j < QK / 4; j++) y[b].s[j] = -128 * (t.qs[4 * j] + t.qs[4 * j + 1] + t.qs[4 * j + 2] + t.qs[4 * j + 3]);
    }
}
void tk_dequantize_row_q8_0s(const void *vx, float *y, int64_t k) {
    const block_q8_0s *x = vx;
    for (int64_t b = 0; b < k / QK; b++)
        for (int i = 0; i < QK; i++) y[b * QK + i] = x[b].d * x[b].qs[i];
}

void tk_quantize_row_f16x(const float *x, void *vy, int64_t k) {
    float *y = vy;
    tk_half h[256];
    for (int64_t i = 0; i < k; i += 256) {
        const size_t m = k - i < 256 ? (size_t)(k - i) : 256;
        tk_convert(x + i, TK_F32, h, TK_F16, m, 1);
        tk_convert(h, TK_F16, y + i, TK_F32, m, 1);
    }
}
void tk_dequantize_row_f16x(const void *x, float *y, int64_t k) { memcpy(y, x, (size_t)k * sizeof(float)); }

/* One activation row into the vec_dot_type. */
void tk_convert_activation_row(int at, const float *x, void *dst, int64_t k) {
    switch (at) {
    case TK_F16: tk_convert(x, TK_F32, dst, TK_F16, (size_t)k, 1); break;
    case TK_BF16: tk_convert(x, TK_F32, dst, TK_BF16, (size_t)k, 1); break;
    case TK_Q8_0: quantize_act_q8_0(x, dst, k); break;
    case TK_Q8_1: quantize_act_q8_1(x, dst, k); break;
    default: {
        const struct tk_type_traits *t = tk_traits(at);
        (t->quantize_row_simd && tk_use_simd() ? t->quantize_row_simd : t->quantize_row)(x, dst, k);
    }
    }
}

/* The tile for n tokens, NULL for the one-token kernels: the type's tile when n fills it; for fewer, down to the width
   of its narrow variant (of two tokens or more), that variant; for fewer tokens than a narrower variant takes (a few
   sequences' next tokens batched), the narrowest such variant, one tile of tokens padded; for one token only a
   variant of one token (on AVX512: Q4_K two rows per register on Q8_KP activations; Q4_0 16 rows a tile, one per
   lane). */
static const struct tk_gemm *gemm_for(int wtype, int64_t n, int64_t cols) {
    const struct tk_gemm *g = n > 0 ? tk_gemm(wtype) : NULL;
    if (g && g->cols_multiple && cols % g->cols_multiple) g = g->other;
    /* between the narrow variant's width and the tile's: the narrow variant, its token tiles repeated */
    if (g && g->narrow && g->narrow->cols > 1 && n > g->narrow->cols && n < g->cols) return g->narrow;
    if (!g || !g->narrow || n > g->narrow->cols) return g && n >= g->cols && n > 1 ? g : NULL;
    do g = g->narrow; while (g->narrow && n <= g->narrow->cols);
    return n > 1 || g->cols == 1 ? g : NULL;
}

int tk_matmul_tile_rows(int wtype, int64_t n, int64_t cols) {
    const struct tk_gemm *g = gemm_for(wtype, n, cols);
    return g ? g->rows : 1;
}

int tk_act_type(int wtype, int64_t n, int64_t cols) {
    const struct tk_dot_traits *d = tk_dot_traits(wtype);
    const struct tk_gemm *g = gemm_for(wtype, n, cols);
    if (!d) return -1;
    return g && g->act_type ? g->act_type : d->vec_dot_type;
}

int tk_convert_activations(int wtype, const float *x, int64_t n, int64_t cols, void *dst) {
    const struct tk_dot_traits *d = tk_dot_traits(wtype);
    const struct tk_type_traits *at = d ? tk_traits(d->vec_dot_type) : NULL;
    if (!at || cols <= 0 || n < 0 || cols % at->block_size) return -1;
    const size_t arow = tk_row_size(d->vec_dot_type, cols);
    for (int64_t j = 0; j < n; j++) tk_convert_activation_row(d->vec_dot_type, x + j * cols, (char *)dst + j * arow, cols);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- the driver */

struct mm_job {
    int wtype;
    const char *w, *a;     /* weight rows; activation rows in the vec_dot_type */
    size_t wrow, arow;     /* bytes per row */
    const float *x;        /* activation conversion phase: source rows */
    int atype;
    int64_t rows, cols, n;
    float *y;
    char *work;            /* tk_matmul_work bytes per thread */
    size_t work_size;
};

static void split(int64_t total, int i, int n, int64_t *a, int64_t *b) {
    int64_t per = total / n, extra = total % n;  /* the first `extra` threads take one more */
    *a = per * i + (i < extra ? i : extra);
    *b = *a + per + (i < extra);
}

static void convert_run(void *p, int i, int nt) {
    struct mm_job *job = p;
    int64_t a, b;
    split(job->n, i, nt, &a, &b);
    for (int64_t j = a; j < b; j++)
        tk_convert_activation_row(job->atype, job->x + j * job->cols, (char *)job->a + j * job->arow, job->cols);
}

static void matmul_run(void *p, int i, int nt) {
    struct mm_job *job = p;
    int64_t a, b;
    split(job->rows, i, nt, &a, &b);
    tk_matmul_rows(job->wtype, job->w, job->cols, a, b, job->a, job->arow, job->n, job->y, job->rows, NULL, 0,
                   job->work + (size_t)i * job->work_size);
}

static inline void put(float *y, int64_t r, float v, const float *bias, int add) {
    if (bias) v += bias[r];
    y[r] = add ? y[r] + v : v;
}

/* rows [r0, r1) × tokens [j0, j1) by vec_dots, two rows at a time where there is a two-row kernel */
static void rows_by_dots(int wtype, const char *wd, size_t wrow, int64_t cols, int64_t r0, int64_t r1, const char *ad,
                         size_t arow, int64_t j0, int64_t j1, float *y, int64_t ldy, const float *bias, int add) {
    tk_vec_dot_fn dot = tk_vec_dot(wtype);
    tk_vec_dot2_fn dot2 = tk_vec_dot2(wtype);
    /* tiles of weight rows that stay in cache while every activation row passes over them */
    int64_t tile = j1 - j0 == 1 ? r1 - r0 : (int64_t)(32768 / wrow) & ~(int64_t)1;
    if (tile < 2) tile = 2;
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
        const int64_t t1 = t0 + tile < r1 ? t0 + tile : r1;
        for (int64_t j = j0; j < j1; j++) {
            const char *a = ad + (size_t)j * arow;
            float *yj = y + j * ldy;
            for (int64_t r = t0; r < t1;) {
                float s[2];
                int nr = 1;
                if (dot2 && r + 1 < t1) {
                    dot2(cols, s, wd + (size_t)r * wrow, wrow, a);
                    nr = 2;
                } else {
                    dot(cols, s, wd + (size_t)r * wrow, a);
                }
                for (int k = 0; k < nr; k++, r++) put(yj, r, s[k], bias, add);
            }
        }
    }
}

/* A tile whose activations the one-token kernels cannot read (packed, or raw with an act_type of its own) runs on
   every row, its last row tile padded with zero rows; the others leave the rows past their last whole tile to the
   one-token kernels. */
static int tiles_take_every_row(const struct tk_gemm *g) { return g->pack || g->pack_rows || g->act_type; }

/* The tokens of one pass over the rows: whole token tiles, at most what half of L2 holds (but 4 tiles), so that they
   stay in L2 while every row tile of the pass meets them (past L2 they come from L3 or memory once per row tile); the
   n tokens in passes of equal size. The rows are repacked once per pass. A tile that asks for it (one_pass) takes
   every token in one pass. */
static int64_t token_block(const struct tk_gemm *g, size_t arow, int64_t n) {
    if (g->one_pass) return (n + g->cols - 1) / g->cols * g->cols;
    int64_t cap = (int64_t)(tk_l2_bytes() / 2 / arow) / g->cols * g->cols;
    if (cap < 4 * g->cols) cap = 4 * g->cols;
    const int64_t passes = (n + cap - 1) / cap, per = (n + passes - 1) / passes;
    return (per + g->cols - 1) / g->cols * g->cols;
}

/* Part k of `parts` equal parts of [p, p + bytes), fetched into L2: a row tile's rows come from memory, one page
   after another (a row of 2048 F16 weights is a page, where the hardware's prefetchers stop), and repacking them
   stalled on each line (F16 TinyLlama-shaped, 128-token prompt: 29% of the time in pack_F16). */
static void prefetch_part(const char *p, size_t bytes, int64_t k, int64_t parts) {
    const size_t per = (bytes / (size_t)parts + 63) / 64 * 64, a = (size_t)k * per, b = a + per < bytes ? a + per : bytes;
    for (size_t o = a; o < b; o += 64) __builtin_prefetch(p + o, 0, 2);
}

/* The rows a tile reads for the rm weight rows at `rows`: the file's, or packed into own (pack_rows: interleaved;
   pack: each row on its own into own, prow bytes apart), or copied into own with zero rows after them when rm is
   short of the tile's. */
static const char *row_tile(const struct tk_gemm *g, const char *rows, size_t wrow, int rm, int64_t cols, char *own,
                            size_t prow) {
    if (g->pack_rows) {
        g->pack_rows(rows, wrow, rm, own, cols);
        return own;
    }
    if (!g->pack && rm == g->rows) return rows;
    for (int k = 0; k < g->rows; k++) {
        if (k >= rm) memset(own + k * prow, 0, prow);
        else if (g->pack) g->pack(rows + (size_t)k * wrow, own + k * prow, cols);
        else memcpy(own + k * prow, rows + (size_t)k * wrow, wrow);
    }
    return own;
}

/* Tiles: each tile's weight rows — the file's, or repacked into work once per pass when the tile reads them packed —
   stay in L1 while every token of the pass meets them; past r1 a tile reads zero rows (in work), whose results are
   dropped; the last, partial token tile runs the tile for fewer tokens where there is one, else reads a zero-padded
   copy of its rows. Else [r0, r1) must be whole row tiles. */
static void tiles(const struct tk_gemm *g, int wtype, const char *wd, size_t wrow, int64_t cols, int64_t r0,
                  int64_t r1, const char *ad, size_t arow, int64_t n, float *y, int64_t ldy, const float *bias,
                  int add, char *work) {
    const size_t prow = g->pack || g->pack_rows ? (size_t)(cols / tk_traits(wtype)->block_size) * g->pack_size : wrow;
    /* the rows a tile reads from work on whole cache lines (malloc gives 16 bytes past a page: each 64-byte load of
       a packed tile, two lines), and the tail's activation blocks aligned whatever the packed rows' size */
    char *own = (char *)(((uintptr_t)work + 63) & ~(uintptr_t)63),
         *tail = own + ((tiles_take_every_row(g) ? (size_t)g->rows * prow : 0) + 63) / 64 * 64;
    const int64_t nt = n - n % g->cols;
    if (nt < n && !g->fewer) {
        memcpy(tail, ad + (size_t)nt * arow, (size_t)(n - nt) * arow);
        memset(tail + (size_t)(n - nt) * arow, 0, (size_t)(g->cols - (n - nt)) * arow);
    }
    float s[TK_GEMM_MAX_TILE * TK_GEMM_MAX_TILE];
    const int64_t tb = token_block(g, arow, n);
    for (int64_t jb = 0; jb < n; jb += tb) {
        const int64_t je = jb + tb < n ? jb + tb : n, tiles_per_pass = (je - jb + g->cols - 1) / g->cols;
        for (int64_t r = r0; r < r1; r += g->rows) {
            const int rm = r1 - r < g->rows ? (int)(r1 - r) : g->rows;
            /* the row tile after this one (the pass's next, or the next pass's first), fetched into L2 a slice per
               token tile while this one computes; not for a pass of one token tile, which streams its rows from memory
               as fast as they come (one token: CodeShell-7B-shaped Q4_0 generation 4.66 -> 4.42 tok/s with it) */
            const int64_t rn0 = tiles_per_pass == 1 ? r1 : r + g->rows < r1 ? r + g->rows : je < n ? r0 : r1;
            const int64_t rn1 = rn0 + g->rows < r1 ? rn0 + g->rows : r1;
            const char *next = wd + (size_t)rn0 * wrow;
            const size_t next_bytes = (size_t)(rn1 - rn0) * wrow;
            const char *rows = row_tile(g, wd + (size_t)r * wrow, wrow, rm, cols, own, prow);
            for (int64_t j = jb; j < je; j += g->cols) {
                const int rn = n - j < g->cols ? (int)(n - j) : g->cols;
                if (next_bytes)  /* (its divisions, for nothing, were 2% of Q4_K's one-token tiles in generation) */
                    prefetch_part(next, next_bytes, (j - jb) / g->cols, tiles_per_pass);
                if (rn < g->cols && g->fewer)
                    g->fewer[rn - 1](cols, s, (size_t)g->cols, rows, prow, ad + (size_t)j * arow, arow);
                else
                    g->fn(cols, s, (size_t)g->cols, rows, prow, j < nt ? ad + (size_t)j * arow : tail, arow);
                for (int t = 0; t < rn; t++) {
                    float *yt = y + (j + t) * ldy;
                    for (int k = 0; k < rm; k++) put(yt, r + k, s[k * g->cols + t], bias, add);
                }
            }
        }
    }
}

size_t tk_matmul_work(int64_t cols) {
    const size_t blocks = (size_t)(cols / QK_K + 1);
    /* a row tile packed, and a token tile of the largest activation block (Q8_K16's); 64 bytes to align them */
    _Static_assert(sizeof(block_q8_K16) >= sizeof(block_q8_KX) && sizeof(block_q8_K16) >= sizeof(block_q8_K),
                   "the largest activation block");
    return (size_t)TK_GEMM_MAX_TILE * blocks * (TK_GEMM_MAX_PACK + sizeof(block_q8_K16)) + 64;
}

void tk_matmul_rows(int wtype, const void *w, int64_t cols, int64_t r0, int64_t r1, const void *act, size_t arow,
                    int64_t n, float *y, int64_t ldy, const float *bias, int add, void *work) {
    const size_t wrow = tk_row_size(wtype, cols);
    const char *wd = w, *ad = act;
    const struct tk_gemm *g = gemm_for(wtype, n, cols);
    if (!g || (!tiles_take_every_row(g) && r1 - r0 < g->rows)) {
        rows_by_dots(wtype, wd, wrow, cols, r0, r1, ad, arow, 0, n, y, ldy, bias, add);
        return;
    }
    /* whole row tiles (or all rows), then the rows past the last whole tile */
    const int64_t rt = tiles_take_every_row(g) ? r1 : r0 + (r1 - r0) / g->rows * g->rows;
    tiles(g, wtype, wd, wrow, cols, r0, rt, ad, arow, n, y, ldy, bias, add, work);
    if (rt < r1) rows_by_dots(wtype, wd, wrow, cols, rt, r1, ad, arow, 0, n, y, ldy, bias, add);
}

int tk_matmul(int wtype, const void *w, int64_t rows, int64_t cols, const float *x, int64_t n, float *y,
              int nthreads) {
    const struct tk_dot_traits *d = tk_dot_traits(wtype);
    const struct tk_type_traits *wt = tk_traits(wtype);
    if (!d || !wt || rows < 0 || n < 0 || cols <= 0 || cols % wt->block_size) return -1;
    const int at = tk_act_type(wtype, n, cols);
    if (cols % tk_traits(at)->block_size) return -1;
    if (rows == 0 || n == 0) return 0;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;

    struct mm_job job = {.wtype = wtype, .w = w, .wrow = tk_row_size(wtype, cols), .arow = tk_row_size(at, cols),
                         .x = x, .atype = at, .rows = rows, .cols = cols, .n = n, .y = y};
    void *buf = NULL;
    if (at == TK_F32) {
        job.a = (const char *)x;
    } else {
        buf = malloc(job.arow * (size_t)n);
        if (!buf) return -3;
        job.a = buf;
        /* converting is cheap next to the product: more threads only for many rows */
        int64_t work = n * cols;
        int ct = work < (1 << 18) ? 1 : nthreads;
        if (ct > n) ct = (int)n;
        tk_parallel(convert_run, &job, ct);
    }
    /* at least 2^19 multiply-adds per thread (starting a thread costs some 30 µs), at most one per weight row */
    int64_t cap = rows * cols * n >> 19;
    int nt = nthreads;
    if (nt > cap) nt = cap > 1 ? (int)cap : 1;
    if (nt > rows) nt = (int)rows;
    job.work_size = tk_matmul_work(cols);
    job.work = malloc(job.work_size * (size_t)nt);
    if (!job.work) {
        free(buf);
        return -3;
    }
    tk_parallel(matmul_run, &job, nt);
    free(job.work);
    free(buf);
    return 0;
}
