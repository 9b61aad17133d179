/* IQ3_XXS and IQ3_S (quants_iq3.c, quants_iq3_avx2.c, quants_iq3_neon.c): the 3.0625 / 3.4375 bits-per-weight types whose 4-tuples of
   3-bit levels index a grid of 256 / 512 points (ggml's iq3xxs_grid / iq3s_grid). Quantizers as ggml_quantize_chunk
   runs them (the _imatrix ones with importance weights qw, or NULL), dequantizers, and dot products with Q8_K
   activations. */
#ifndef TOOLKIT_QUANTS_IQ3_H
#define TOOLKIT_QUANTS_IQ3_H

#include "quants.h"

/* IQ3_XXS: fp16 scale; 64 one-byte grid indices, then per 32 weights a 32-bit word of four 7-bit sign groups (the
   eighth sign of each is its parity) and a 4-bit scale (bits 28..31) */
typedef struct { tk_half d; uint8_t qs[3 * QK_K / 8]; } block_iq3_xxs;
/* IQ3_S: fp16 scale; 64 index lows, their ninth bits (a byte per 32 weights), explicit signs, 4-bit scales per 32 */
typedef struct { tk_half d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t signs[QK_K / 8]; uint8_t scales[QK_K / 64]; } block_iq3_s;
static_assert(sizeof(block_iq3_xxs) == 98, "block_iq3_xxs layout");
static_assert(sizeof(block_iq3_s) == 110, "block_iq3_s layout");

/* the dequantization grids (ggml's iq3xxs_grid / iq3s_grid: 4 unsigned values per entry) and the ±1 bytes of each
   7-bit sign group with its parity (ggml's keven_signs_q2xs), filled when the library loads */
extern uint32_t tk_iq3xxs_grid[256], tk_iq3s_grid[512];
extern uint64_t tk_iq3_even_signs[128];

void quantize_row_iq3_xxs(const float *x, void *y, int64_t k);
void quantize_row_iq3_s(const float *x, void *y, int64_t k);
void quantize_row_iq3_xxs_imatrix(const float *x, void *y, int64_t k, const float *qw);
void quantize_row_iq3_s_imatrix(const float *x, void *y, int64_t k, const float *qw);
void dequantize_row_iq3_xxs(const void *x, float *y, int64_t k);
void dequantize_row_iq3_s(const void *x, float *y, int64_t k);
void tk_vec_dot_iq3_xxs_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq3_s_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq3_xxs_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq3_s_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
/* ARM64 (quants_iq3_neon.c): the scalar kernels' bits at the NEON and the dotprod level */
void tk_vec_dot_iq3_xxs_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq3_xxs_q8_K_dot(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq3_s_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq3_s_q8_K_dot(int64_t n, float *s, const void *x, const void *y);

#endif
