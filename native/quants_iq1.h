/* IQ1_S and IQ1_M (quants_iq1.c, quants_iq1_avx2.c): the 1.5625 / 1.75 bits-per-weight types whose groups of 8
   weights index a grid of 2048 ternary patterns (ggml's iq1s_grid) shifted by ±1/8, with 3-bit block scales.
   Quantizers as ggml_quantize_chunk runs them (IQ1_S only with importance weights, as ggml; IQ1_M with or without),
   dequantizers, and dot products with Q8_K activations. */
#ifndef TOOLKIT_QUANTS_IQ1_H
#define TOOLKIT_QUANTS_IQ1_H

#include "quants.h"

#define IQ1_NGRID 2048
#define IQ1_DELTA 0.125f /* the shift of the ternary values (IQ1S_DELTA = IQ1M_DELTA) */

/* IQ1_S: fp16 scale; per 32 weights four 8-bit grid index lows and a 16-bit word of the four 3-bit index highs
   (bits 0..11), the 3-bit block scale (12..14) and the shift sign (15) */
typedef struct { tk_half d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; } block_iq1_s;
/* IQ1_M: per 16 weights two index lows, a byte of two 3-bit index highs each with its shift sign (bits 3, 7), a
   3-bit scale; the fp16 super-block scale in the top nibbles of the four 16-bit scale words */
typedef struct { uint8_t qs[QK_K / 8]; uint8_t qh[QK_K / 16]; uint8_t scales[QK_K / 32]; } block_iq1_m;
static_assert(sizeof(block_iq1_s) == 50, "block_iq1_s layout");
static_assert(sizeof(block_iq1_m) == 56, "block_iq1_m layout");

/* the grid as 8 signed bytes per entry (-1, 0, 1), ggml's iq1s_grid */
extern const uint64_t *const tk_iq1s_grid;

void quantize_row_iq1_s_imatrix(const float *x, void *y, int64_t k, const float *qw);
void quantize_row_iq1_m_imatrix(const float *x, void *y, int64_t k, const float *qw);
void quantize_row_iq1_m(const float *x, void *y, int64_t k);
void dequantize_row_iq1_s(const void *x, float *y, int64_t k);
void dequantize_row_iq1_m(const void *x, float *y, int64_t k);
void tk_vec_dot_iq1_s_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq1_m_q8_K(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq1_s_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq1_m_q8_K_avx2(int64_t n, float *s, const void *x, const void *y);
/* ARM64 (quants_iq1_neon.c): the scalar kernels' bits at the NEON and the dotprod level */
void tk_vec_dot_iq1_s_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq1_s_q8_K_dot(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq1_m_q8_K_neon(int64_t n, float *s, const void *x, const void *y);
void tk_vec_dot_iq1_m_q8_K_dot(int64_t n, float *s, const void *x, const void *y);

#endif
