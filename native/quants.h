/* GGML block layouts and the row quantizers/dequantizers of the native core.
   Layouts are the file format (packed, little-endian, as ggml-common.h fixes them); the algorithms are ggml's
   reference (no importance matrix), reproduced bit for bit: see ../shared/docs/ggml-reference.md §1. */
#ifndef TOOLKIT_QUANTS_H
#define TOOLKIT_QUANTS_H

#include <assert.h>
#include <stdint.h>
#include "core.h"

#define QK 32     /* block size of the legacy types */
#define QK_K 256  /* super-block size of the k-quants */
#define K_SCALE_SIZE 12

typedef uint16_t tk_half;

typedef struct { tk_half d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { tk_half d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { tk_half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { tk_half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { tk_half d; int8_t qs[QK]; } block_q8_0;
typedef struct { tk_half d, s; int8_t qs[QK]; } block_q8_1;
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; tk_half d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; tk_half d; } block_q3_K;
typedef struct { tk_half d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { tk_half d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; tk_half d; } block_q6_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;
/* IQ4_NL / IQ4_XS: 4-bit indices into tk_iq4nl_values (quants_iq.c), per block of 32 / super-block of 256 */
typedef struct { tk_half d; uint8_t qs[QK / 2]; } block_iq4_nl;
typedef struct { tk_half d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; } block_iq4_xs;
/* TQ1_0 / TQ2_0: ternary weights (quants_ternary.c), five trits per byte / four 2-bit trits per byte */
typedef struct { uint8_t qs[(QK_K - 4 * QK_K / 64) / 5]; uint8_t qh[QK_K / 64]; tk_half d; } block_tq1_0;
typedef struct { uint8_t qs[QK_K / 4]; tk_half d; } block_tq2_0;
/* TK_Q8_KX, the activations of the Q4_K tiles: a Q8_K block with its quants reordered so that bytes 32s..32s+31 hold
   elements 4s..4s+3 of each of the 8 sub-blocks of 32 (qs[32s + 4l + i] = element 4s + i of sub-block l), and in
   place of bsums yb[l] = d · (sum of sub-block l's quants). */
typedef struct { float d; int8_t qs[QK_K]; float yb[QK_K / 32]; } block_q8_KX;
/* TK_Q8_KP, the activations of AVX512's one-token Q4_K kernel: a block_q8_KX whose quants are Q8_K's with the
   sub-blocks of 32 in the order 0 2 1 3 4 6 5 7, so that each 64 bytes meet the low or high nibbles of 64 bytes of
   a Q4_K row (yb in the sub-blocks' order, as Q8_KX's). */
/* TK_Q8_K16, the activations of the IQ tiles on 16-bit tokens (the grid types' AVX2 and AVX512 tiles, IQ4_XS's AVX2
   tile): a Q8_K block's d and quants, widened to 16 bits once per token and matrix */
typedef struct { float d; int16_t qs[QK_K]; } block_q8_K16;
/* TK_Q8_0S, the activations of AVX512's Q8_0 tile (16 rows in lanes, weights biased by 128 to unsigned bytes): a
   Q8_0 block's quants and scale (as F32), and s[j] = -128 · (the sum of quants 4j..4j+3), which the tile starts each
   lane of Σ (w + 128)·y from so that it ends on Σ w·y */
typedef struct { float d; int32_t s[QK / 4]; int8_t qs[QK]; } block_q8_0s;

static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 layout");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 layout");
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 layout");
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 layout");
static_assert(sizeof(block_q2_K) == 84, "block_q2_K layout");
static_assert(sizeof(block_q3_K) == 110, "block_q3_K layout");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K layout");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K layout");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K layout");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K layout");
static_assert(sizeof(block_q8_KX) == 292, "block_q8_KX layout");
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl layout");
static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs layout");
static_assert(sizeof(block_tq1_0) == 54, "block_tq1_0 layout");
static_assert(sizeof(block_tq2_0) == 66, "block_tq2_0 layout");

/* k is the number of elements, a multiple of the type's block size. */
typedef void (*tk_quantize_row_fn)(const float *x, void *y, int64_t k);
typedef void (*tk_dequantize_row_fn)(const void *x, float *y, int64_t k);

struct tk_type_traits {
    const char *name;
    int64_t block_size;
    size_t type_size;                   /* bytes per block */
    tk_quantize_row_fn quantize_row;     /* reference quantizer, bit-exact with ggml's (no imatrix) */
    tk_dequantize_row_fn dequantize_row;
    tk_quantize_row_fn quantize_row_simd; /* AVX2 (x86) or NEON (ARM64, legacy types) version giving the same bytes,
                                             or NULL; used when tk_use_simd() */
};

/* The SIMD paths are used when the CPU has AVX2 and F16C and TOOLKIT_FORCE_SCALAR is not set. */
int tk_use_simd(void);

/* The one table: NULL for ids the core does not handle. */
const struct tk_type_traits *tk_traits(int type);
size_t tk_row_size(int type, int64_t n);

/* Whole matrices, rows split across threads. Return 0, or -1 for an unknown type / a bad row length. */
int tk_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, int nthreads);
/* As tk_quantize_rows from F32, F16 or BF16 rows, widened to f32 one row at a time. Rows holding NaN/Inf are not
   quantized: returns -2 with their count in *nonfinite; -3 if memory ran out. */
int tk_quantize_rows_from(int type, const void *src, int src_type, void *dst, int64_t nrows, int64_t n_per_row,
                          int nthreads, int64_t *nonfinite);
int tk_dequantize_rows(int type, const void *src, float *dst, int64_t nrows, int64_t n_per_row, int nthreads);

/* Importance-matrix quantizers (quants_imatrix.c): one row of n elements with one weight per column in qw, as ggml's
   quantize_*_impl with quant_weights. NULL for types whose ggml quantizer ignores the weights. */
typedef void (*tk_quantize_row_imatrix_fn)(const float *x, void *y, int64_t n, const float *qw);
tk_quantize_row_imatrix_fn tk_quantize_row_imatrix(int type);
/* As tk_quantize_rows_from, each row quantized with the weights qw (n_per_row floats; NULL: as without them). */
int tk_quantize_rows_imatrix(int type, const void *src, int src_type, void *dst, int64_t nrows, int64_t n_per_row,
                             int nthreads, const float *qw, int64_t *nonfinite);

/* Legacy types (quants_legacy.c) */
void quantize_row_q4_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_1_ref(const float *x, void *y, int64_t k);
void quantize_row_q5_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q5_1_ref(const float *x, void *y, int64_t k);
void quantize_row_q8_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q8_1_ref(const float *x, void *y, int64_t k);
void dequantize_row_q4_0(const void *x, float *y, int64_t k);
void dequantize_row_q4_1(const void *x, float *y, int64_t k);
void dequantize_row_q5_0(const void *x, float *y, int64_t k);
void dequantize_row_q5_1(const void *x, float *y, int64_t k);
void dequantize_row_q8_0(const void *x, float *y, int64_t k);
void dequantize_row_q8_1(const void *x, float *y, int64_t k);

/* AVX2 versions (quants_legacy_avx2.c, quants_k_avx2.c): same bytes as the reference, several blocks at a time */
void quantize_row_q4_0_avx2(const float *x, void *y, int64_t k);
void quantize_row_q4_1_avx2(const float *x, void *y, int64_t k);
void quantize_row_q5_0_avx2(const float *x, void *y, int64_t k);
void quantize_row_q5_1_avx2(const float *x, void *y, int64_t k);
void quantize_row_q8_0_avx2(const float *x, void *y, int64_t k);
void quantize_row_q2_K_avx2(const float *x, void *y, int64_t k);
void quantize_row_q3_K_avx2(const float *x, void *y, int64_t k);
void quantize_row_q4_K_avx2(const float *x, void *y, int64_t k);
void quantize_row_q5_K_avx2(const float *x, void *y, int64_t k);
void quantize_row_q6_K_avx2(const float *x, void *y, int64_t k);
void quantize_row_q8_K_avx2(const float *x, void *y, int64_t k);

/* NEON versions (quants_legacy_neon.c, quants_k_neon.c; ARM64 only): same bytes as the reference */
void quantize_row_q4_0_neon(const float *x, void *y, int64_t k);
void quantize_row_q4_1_neon(const float *x, void *y, int64_t k);
void quantize_row_q5_0_neon(const float *x, void *y, int64_t k);
void quantize_row_q5_1_neon(const float *x, void *y, int64_t k);
void quantize_row_q8_0_neon(const float *x, void *y, int64_t k);
void quantize_row_q8_K_neon(const float *x, void *y, int64_t k);  /* quants_k_neon.c */
void quantize_row_q2_K_neon(const float *x, void *y, int64_t k);  /* quants_k_neon.c */
void quantize_row_q3_K_neon(const float *x, void *y, int64_t k);  /* quants_k_neon.c */
void quantize_row_q4_K_neon(const float *x, void *y, int64_t k);  /* quants_k_neon.c */
void quantize_row_q5_K_neon(const float *x, void *y, int64_t k);  /* quants_k_neon.c */
void quantize_row_q6_K_neon(const float *x, void *y, int64_t k);  /* quants_k_neon.c */

/* k-quants (quants_k.c) */
void quantize_row_q2_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q3_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q5_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q6_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q8_K_ref(const float *x, void *y, int64_t k);
void dequantize_row_q2_K(const void *x, float *y, int64_t k);
void dequantize_row_q3_K(const void *x, float *y, int64_t k);
void dequantize_row_q4_K(const void *x, float *y, int64_t k);
void dequantize_row_q5_K(const void *x, float *y, int64_t k);
void dequantize_row_q6_K(const void *x, float *y, int64_t k);
void dequantize_row_q8_K(const void *x, float *y, int64_t k);
/* Q3_K scale quantization and packing, shared by the scalar and AVX2 quantizers */
void q3_K_pack_scales(const float scales[QK_K / 16], block_q3_K *y);
/* The steps after the sub-block fits, shared by the reference and the imatrix quantizers (quants_k.c): packings,
   and the quants re-derived from the decoded scales */
void pack_2bit(const uint8_t *L, uint8_t *qs);
void pack_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t *scales);
void q2_K_finish(const float *x, uint8_t L[QK_K], block_q2_K *y);
/* Q2_K steps 2-4 from the sub-blocks' fitted scales and mins: 4-bit scales/mins, d/dmin, q2_K_finish */
void q2_K_scales_finish(const float *x, const float scales[QK_K / 16], const float mins[QK_K / 16], uint8_t L[QK_K],
                        block_q2_K *y);
void q3_K_finish(const float *x, int8_t L[QK_K], block_q3_K *y);
void k4_requantize(const float *x, int nmax, const uint8_t scales[K_SCALE_SIZE], tk_half d16, tk_half dmin16,
                   uint8_t L[QK_K]);
/* Q4_K/Q5_K steps 2-3 from the sub-blocks' fitted scales and mins: 6-bit scales/mins packed, d/dmin, final quants */
void k4_finish(const float *x, int nmax, const float scales[QK_K / 32], const float mins[QK_K / 32],
               uint8_t scales_out[K_SCALE_SIZE], tk_half *d_out, tk_half *dmin_out, uint8_t L[QK_K]);
void q4_K_pack_quants(const uint8_t L[QK_K], block_q4_K *y);
void q5_K_pack_quants(const uint8_t L[QK_K], block_q5_K *y);
void q6_K_finish(const float *x, const float scales[QK_K / 16], float max_scale, float max_abs_scale,
                 int8_t L[QK_K], block_q6_K *y);
/* Q5_0/Q5_1: low nibbles as Q4, bit 4 of element j in bit j of the 32-bit qh word (quants_legacy.c) */
void pack_q5(const uint8_t q[QK], uint8_t qs[QK / 2], uint8_t qh_bytes[4]);

/* IQ4_NL / IQ4_XS (quants_iq.c, quants_iq_avx2.c): quantizers as ggml_quantize_chunk runs them (the _imatrix ones
   with importance weights qw, or NULL), dequantizers, dot products with Q8_0 / Q8_K activations */
extern const int8_t tk_iq4nl_values[16];
void quantize_row_iq4_nl(const float *x, void *y, int64_t k);
void quantize_row_iq4_xs(const float *x, void *y, int64_t k);
void quantize_row_iq4_nl_imatrix(const float *x, void *y, int64_t k, const float *qw);
void quantize_row_iq4_xs_imatrix(const float *x, void *y, int64_t k, const float *qw);
void dequantize_row_iq4_nl(const void *x, float *y, int64_t k);
void dequantize_row_iq4_xs(const void *x, float *y, int64_t k);
void tk_vec_dot_iq4_nl_q8_0(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq4_xs_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq4_nl_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq4_xs_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
/* the quantizer's searches on AVX2 (quants_iq4_fit_avx2.c; x86 only, same bits): Σw·q·x and Σw·q² of a block of 32
   for the 2·ntry + 1 ≤ 16 grids (itry + value[0])/max, itry = -ntry..ntry; the nearest-value indices of n (a multiple
   of 8) elements scaled by id */
void tk_iq4_try_sums_avx2(const float *x, const float *w, float max, int ntry, float *sumqx, float *sumq2);
void tk_iq4_indices_avx2(const float *x, float id, int n, uint8_t *L);
/* the imatrix affine fit's grid search on AVX2 (quants_imatrix_avx2.c; x86 only, same bits): `count` <= 8 grids from
   `first`, all over x − min, n <= 32; the first improving on best_err (its quants, scale, min, error set), or count */
int tk_affine_steps_avx2(int n, int nmax, const float *x, const float *w, float min, float max, float sum_w,
                         float sum_x, float rmin, float rdelta, int first, int count, float best_err, uint8_t *L,
                         float *scale, float *the_min, float *err);
/* fit_symmetric_weighted's 18 grids on AVX2 (quants_imatrix_avx2.c; x86 only, same bits): their Σw·x·l, Σw·l² */
void tk_symmetric_tries_avx2(int n, int nmax, const float *x, const float *w, float max, float *sumlx, float *suml2);

/* TQ1_0 / TQ2_0 (quants_ternary.c, quants_ternary_avx2.c): quantizers (ggml's reference; no importance matrix),
   dequantizers, dot products with Q8_K activations */
void quantize_row_tq1_0(const float *x, void *y, int64_t k);
void quantize_row_tq2_0(const float *x, void *y, int64_t k);
void dequantize_row_tq1_0(const void *x, float *y, int64_t k);
void dequantize_row_tq2_0(const void *x, float *y, int64_t k);
void tk_vec_dot_tq1_0_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_tq2_0_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_tq1_0_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_tq2_0_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);

/* Rounding helpers shared by the quantizers. */
static inline int tk_nearest_int(float fval) {
    /* round half to even via the float mantissa (valid for |fval| <= 4194303), as ggml does */
    float val = fval + 12582912.f;
    int i;
    __builtin_memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* ==== Matrix products (dot.c, dot_avx2.c) ========================================================================
   y[n][rows] = x[n][cols] · W[rows][cols]ᵀ, W stored row-major as wtype (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
   Q2_K..Q6_K), x and y float32. As in ggml, the activations are converted once per call to the weight type's
   vec_dot_type (Q4_0/Q5_0/Q8_0 -> Q8_0, Q4_1/Q5_1 -> Q8_1, K-quants -> Q8_K, F16/BF16/F32 -> themselves; Q8_KX, the
   same quants reordered, for batches that go through the Q4_K tiles, and Q8_KP for AVX512's one-token Q4_K kernel), then each output is vec_dot(weight row,
   activation row) or a tile's equal result. Weight rows are split across up to nthreads threads (fewer when
   the product is small); the result does not depend on the number of threads. Returns 0, -1 for an unsupported type
   or a bad shape (cols not a multiple of the block sizes), -3 when memory ran out. */
int tk_matmul(int wtype, const void *w, int64_t rows, int64_t cols, const float *x, int64_t n, float *y, int nthreads);

/* Rows [r0, r1) of y[j][r] = (y[j][r] if add) + W[r] · act[j] (+ bias[r]) for j < n: W of wtype with rows of cols
   elements, act rows of arow bytes in its vec_dot_type, y rows ldy floats apart (bias may be NULL). The kernel of
   tk_matmul and of the forward pass: pairs of rows through the two-row kernels, weight tiles kept in cache across
   the activation rows. */
void tk_matmul_rows(int wtype, const void *w, int64_t cols, int64_t r0, int64_t r1, const void *act, size_t arow,
                    int64_t n, float *y, int64_t ldy, const float *bias, int add, void *work);
/* The type n activation rows are converted to for a product with wtype weights: the vec_dot_type, or the activation
   type of the type's packed tile when n is at least the tile's width (-1 for a type without products). */
int tk_act_type(int wtype, int64_t n, int64_t cols);
/* The rows of the tile tk_matmul_rows runs for n tokens of wtype (1 when it runs the one-token kernels): a range of
   rows a multiple of it runs whole tiles only. */
int tk_matmul_tile_rows(int wtype, int64_t n, int64_t cols);
/* Bytes of work memory tk_matmul_rows may need (for any weight type) with rows of cols elements. */
size_t tk_matmul_work(int64_t cols);

/* *s = dot(x, y) over n elements: x one weight row of the type, y one activation row of its vec_dot_type. */
typedef void (*tk_vec_dot_fn)(int64_t n, float *s, const void *x, const void *y);

/* s[0], s[1] = dots of the weight rows at x and x + bx with the activation row y: the same results as two vec_dots */
typedef void (*tk_vec_dot2_fn)(int64_t n, float *s, const void *x, size_t bx, const void *y);

struct tk_dot_traits {
    int vec_dot_type;          /* type the activations are converted to */
    tk_vec_dot_fn vec_dot;     /* scalar, following ggml's reference (ggml_vec_dot_*_generic) */
    tk_vec_dot_fn vec_dot_simd; /* AVX2 version (same integer sums, float sums in lanes), or NULL */
    tk_vec_dot2_fn vec_dot2_simd; /* two rows at once, same results as vec_dot_simd, or NULL */
    tk_vec_dot2_fn vec_dot2_vnni; /* the same with AVX-VNNI, or NULL */
};

/* The one table of matrix-product kernels: NULL for types without one. */
const struct tk_dot_traits *tk_dot_traits(int wtype);
/* The vec_dot matmul uses for wtype now (SIMD when tk_use_simd()), NULL when none. */
tk_vec_dot_fn tk_vec_dot(int wtype);
/* The two-row kernel to use with it, or NULL (then pairs of rows take two vec_dots). */
tk_vec_dot2_fn tk_vec_dot2(int wtype);
/* Convert n activation rows of cols floats to wtype's vec_dot_type (rows of tk_row_size(vec_dot_type, cols) bytes
   in dst; nothing to do for F32). Returns 0 or -1. */
int tk_convert_activations(int wtype, const float *x, int64_t n, int64_t cols, void *dst);
/* One activation row (k elements, whole blocks) into the vec_dot_type at, as llama.cpp's CPU backend converts it. */
void tk_convert_activation_row(int at, const float *x, void *dst, int64_t k);
/* TK_Q8_KX and TK_Q8_KP rows: quantized as Q8_K, then reordered */
void tk_quantize_row_q8_KX(const float *x, void *dst, int64_t k);
void tk_dequantize_row_q8_KX(const void *x, float *y, int64_t k);
void tk_quantize_row_q8_KP(const float *x, void *dst, int64_t k);
void tk_dequantize_row_q8_KP(const void *x, float *y, int64_t k);
/* TK_Q8_K16 rows: quantized as Q8_K, then widened */
void tk_quantize_row_q8_K16(const float *x, void *dst, int64_t k);
void tk_dequantize_row_q8_K16(const void *x, float *y, int64_t k);
/* TK_Q8_0S rows: quantized as Q8_0 activations, with the sums */
void tk_quantize_row_q8_0s(const float *x, void *dst, int64_t k);
void tk_dequantize_row_q8_0s(const void *x, float *y, int64_t k);
/* TK_F16X rows: rounded to F16 as TK_F16's are, held as F32 */
void tk_quantize_row_f16x(const float *x, void *dst, int64_t k);
void tk_dequantize_row_f16x(const void *x, float *y, int64_t k);

/* fp16 -> f32 for all 65536 values (filled at load time), as ggml's ggml_table_f32_f16 */
extern float tk_fp16_table[1 << 16];

/* Scale unpacking shared by the scalar and SIMD kernels. */
void tk_unpack_scales_k4(const uint8_t q[K_SCALE_SIZE], uint8_t sc[8], uint8_t mn[8]);
void tk_unpack_scales_q3_K(const uint8_t q[12], int8_t sc[16]);

/* AVX2 kernels (dot_avx2.c; x86 only) */
void tk_vec_dot_f32_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_f16_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_bf16_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q4_1_q8_1_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q5_1_q8_1_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q2_K_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q3_K_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot2_f16_avx2(int64_t n, float *s, const void *x, size_t bx, const void *y);
void tk_vec_dot2_bf16_avx2(int64_t n, float *s, const void *x, size_t bx, const void *y);
void tk_vec_dot2_q4_0_q8_0_avx2(int64_t n, float *s, const void *x, size_t bx, const void *y);
void tk_vec_dot2_q8_0_q8_0_avx2(int64_t n, float *s, const void *x, size_t bx, const void *y);
void tk_vec_dot2_q4_0_q8_0_vnni(int64_t n, float *s, const void *x, size_t bx, const void *y);
void tk_vec_dot2_q8_0_q8_0_vnni(int64_t n, float *s, const void *x, size_t bx, const void *y);
void tk_vec_dot2_q4_K_q8_K_avx2(int64_t n, float *s, const void *x, size_t bx, const void *y);
void tk_vec_dot2_q6_K_q8_K_avx2(int64_t n, float *s, const void *x, size_t bx, const void *y);
/* ARM64 kernels (dot_neon.c): the vec_dot for wtype at level 1 NEON or 2 dotprod and above (tk_arm_level), NULL when
   there is none; bit for bit the scalar kernel's for the quantized types */
tk_vec_dot_fn tk_vec_dot_neon(int wtype, int level);
/* its two-row form (same bits as two tk_vec_dot_neon calls), NULL when none */
tk_vec_dot2_fn tk_vec_dot2_neon(int wtype, int level);
/* prompt processing's tile of wtype at that level (dot_neon.c), NULL when none */
const struct tk_gemm *tk_gemm_neon(int wtype, int level);
const struct tk_gemm *tk_gemm_i8mm(int wtype); /* the i8mm level's tiles (dot_i8mm.c), NULL for none */
/* AVX-VNNI present (and SIMD not forced off) */
int tk_use_vnni(void);
/* AVX512 F/VL/BW/VNNI present (and SIMD not forced off, TOOLKIT_NO_AVX512 unset) */
int tk_use_avx512(void);

/* A tile of a matrix product: s[r·ls + t] = dot of weight row r (at x + r·bx) with activation row t (at y + t·by)
   for r < rows, t < cols, over n elements; bit for bit the results of the type's SIMD vec_dot.
   A packed tile reads its weight rows repacked by pack (pack_size bytes per block of the weight type), the others
   the file's rows (pack NULL); the activations are in act_type, or the vec_dot_type when it is 0. */
typedef void (*tk_gemm_fn)(int64_t n, float *s, size_t ls, const void *x, size_t bx, const void *y, size_t by);
typedef void (*tk_pack_fn)(const void *x, void *dst, int64_t n);
typedef void (*tk_pack_rows_fn)(const void *x, size_t bx, int nr, void *dst, int64_t n);
/* narrow: the variant for fewer tokens than the tile takes (a few generating sequences batched; same bits per (row,
   token)), NULL when none */
struct tk_gemm {
    tk_gemm_fn fn;
    int rows, cols;
    tk_pack_fn pack;
    size_t pack_size;
    int act_type;
    const struct tk_gemm *narrow;
    /* when set, packs a whole row tile at once instead of pack (its rows interleaved as the tile reads them): nr rows
       at x + r·bx, zero rows up to the tile's, pack_size bytes per row and block; the tile gets bx = that row size */
    tk_pack_rows_fn pack_rows;
    /* when set, fewer[k - 1] is the tile over the same (packed) rows for k < cols tokens, which the last, partial
       token tile of a pass runs (else the tile itself on a zero-padded copy of its tokens) */
    const tk_gemm_fn *fewer;
    /* when set, a pass takes every token (the rows packed once): the tile reads so few activation bytes per
       multiply-add that they come fast enough from past L2 */
    int one_pass;
    /* when set, rows whose length is no multiple of cols_multiple take the family `other` instead (another order) */
    int cols_multiple;
    const struct tk_gemm *other;
};
#define TK_GEMM_MAX_TILE 32 /* rows or tokens of a tile, at most */
#define TK_GEMM_MAX_PACK 548 /* bytes per weight block of a packed tile, at most (IQ1_S's tile: 548) */
/* The tile kernel for wtype on this CPU (NULL when none, or the scalar path is forced). */
const struct tk_gemm *tk_gemm(int wtype);
/* x86 builds: level 0 AVX2, 1 AVX-VNNI, 2 AVX512-VNNI */
const struct tk_gemm *tk_gemm_x86(int wtype, int level);
/* the tile of an IQ type at that level (tiles_iq_x86.c), NULL where there is none */
const struct tk_gemm *tk_gemm_iq_x86(int wtype, int level);
/* the AVX512 one-row and two-row products of a weight type (dot_avx512.c), NULL where there are none */
tk_vec_dot_fn tk_vec_dot_avx512(int wtype);
tk_vec_dot2_fn tk_vec_dot2_avx512(int wtype);
/* ==== end of matrix products ===================================================================================== */

/* 8 float lanes summed in ggml's hsum_float_8 order: the scalar kernels that follow ggml's AVX2 float order end so */
static inline float tk_lanes_sum8(const float a[8]) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* A scalar dot product of BLOCK weights (a fp16 d per super-block of QK_K) with Q8_K activations in ggml's AVX2 float
   order: per sub-block of 32 (ib, its activations q8), the body (the variadic arguments) adds its exact integer sums
   into lane[8]; per super-block one fused multiply-add of d_x·d_y per lane; FACTOR times tk_lanes_sum8 at the end.
   The NEON kernels of the same types (simd_neon.h's Q8_K_SUPER_DOT) give these bits. */
#define TK_Q8_K_SUPER_DOT(NAME, BLOCK, FACTOR, ...)                                                               \
    void NAME(int64_t n, float *s, const void *vx, const void *vy) {                                              \
        const BLOCK *x = vx;                                                                                      \
        const block_q8_K *y = vy;                                                                                 \
        float acc[8] = {0};                                                                                       \
        for (int64_t i = 0; i < n / QK_K; ++i) {                                                                  \
            const float d = tk_fp16_table[x[i].d] * y[i].d;                                                       \
            int32_t lane[8] = {0};                                                                                \
            for (int ib = 0; ib < QK_K / 32; ++ib) {                                                              \
                const int8_t *q8 = y[i].qs + 32 * ib;                                                             \
                __VA_ARGS__                                                                                       \
            }                                                                                                     \
            for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lane[l], acc[l]);                                 \
        }                                                                                                         \
        *s = FACTOR * tk_lanes_sum8(acc);                                                                         \
    }

/* The small helpers of the quantizers (quants_k.c and the files that follow its rules): ggml's GROUP_MAX_EPS (a group
   whose largest magnitude is below it quantizes to zeros) and integer min / max / clamp. */
#define GROUP_MAX_EPS 1e-15f
static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }
static inline int clampi(int v, int lo, int hi) { return imax(lo, imin(hi, v)); }

#endif
