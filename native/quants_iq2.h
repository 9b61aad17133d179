/* IQ2_XXS, IQ2_XS and IQ2_S (quants_iq2.c, quants_iq2_avx2.c): groups of 8 weights as points of a 256-, 512- or
   1024-point grid of values 8, 25, 43 with sign bits, 4-bit scales under an fp16 super-block scale. Quantizers as
   ggml_quantize_chunk runs them (IQ2_XXS and IQ2_XS only with importance weights, as ggml; IQ2_S with or without),
   dequantizers, and dot products with Q8_K activations. */
#ifndef TOOLKIT_QUANTS_IQ2_H
#define TOOLKIT_QUANTS_IQ2_H

#include "quants.h"

/* IQ2_XXS: per 32 weights a 32-bit word of four 8-bit grid indices, then one of four 7-bit sign groups (bits 0..27)
   and the 4-bit scale (28..31) */
typedef struct { tk_half d; uint16_t qs[QK_K / 8]; } block_iq2_xxs;
/* IQ2_XS: per 8 weights a 9-bit grid index and a 7-bit sign group; a 4-bit scale per 16 weights */
typedef struct { tk_half d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; } block_iq2_xs;
/* IQ2_S: per 8 weights the low byte of a 10-bit grid index (qs[0..31]) and 8 sign bits (qs[32..63]), the index highs
   2 bits each in qh; a 4-bit scale per 16 weights */
typedef struct { tk_half d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t scales[QK_K / 32]; } block_iq2_s;
static_assert(sizeof(block_iq2_xxs) == 66, "block_iq2_xxs layout");
static_assert(sizeof(block_iq2_xs) == 74, "block_iq2_xs layout");
static_assert(sizeof(block_iq2_s) == 82, "block_iq2_s layout");

/* the dequantization grids (8 value bytes per point: ggml's iq2xxs_grid, iq2xs_grid, iq2s_grid), the 8 sign bits of
   each 7-bit group with its parity (ggml's ksigns_iq2xs), and the ±1 bytes of each 8 sign bits; filled at load */
extern uint64_t tk_iq2xxs_grid[256], tk_iq2xs_grid[512], tk_iq2s_grid[1024];
extern uint8_t tk_iq2_ksigns[128];
extern uint64_t tk_iq2_sign_bytes[256];

void quantize_row_iq2_xxs_imatrix(const float *x, void *y, int64_t k, const float *qw);
void quantize_row_iq2_xs_imatrix(const float *x, void *y, int64_t k, const float *qw);
void quantize_row_iq2_s_imatrix(const float *x, void *y, int64_t k, const float *qw);
void quantize_row_iq2_s(const float *x, void *y, int64_t k);
void dequantize_row_iq2_xxs(const void *x, float *y, int64_t k);
void dequantize_row_iq2_xs(const void *x, float *y, int64_t k);
void dequantize_row_iq2_s(const void *x, float *y, int64_t k);
void tk_vec_dot_iq2_xxs_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_xs_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_s_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_xxs_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_xs_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_s_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
/* ARM64 (quants_iq2_neon.c): the scalar kernels' bits at the NEON and the dotprod level */
void tk_vec_dot_iq2_xxs_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_xxs_q8_K_dot(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_xs_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_xs_q8_K_dot(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_s_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq2_s_q8_K_dot(int64_t n, float *s, const void *x, const void *y);

/* ggml's make_qp_quants (quants_imatrix.c): non-negative x ≈ scale·L, L in [0, nmax], weights w; returns the scale */
float fit_scales_weighted(int n, int nmax, const float *x, uint8_t *L, const float *w);

#endif
