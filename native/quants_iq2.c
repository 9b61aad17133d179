/* The 2-bit "grid" types IQ2_XXS (2.06 bpw), IQ2_XS (2.31 bpw) and IQ2_S (2.56 bpw): each group of 8 weights is one
   point of a grid of 256 / 512 / 1024 vectors whose values are 8, 25 or 43 (index form in quants_iq2_grids.h), with
   signs (7 bits and an even-parity eighth for IQ2_XXS/IQ2_XS, 8 bits for IQ2_S), and 4-bit scales per 32 (IQ2_XXS) or
   16 weights under an fp16 super-block scale.

   Quantizers bit-exact with ggml's quantize_iq2_xxs / quantize_iq2_xs / quantize_iq2_s (what ggml_quantize_chunk
   runs; IQ2_XXS and IQ2_XS only with an importance matrix, as ggml asserts), their search tables (for every 8-vector
   of levels off the grid, the grid points at the nearest one (IQ2_S) or two distances, by index) built once per
   process and type under pthread_once, and the scale search over them (quants_grid.c, shared with IQ3); dequantizers; the scalar dot products in the float order of ggml's AVX2 kernels. Same float rules as quants_k.c: fp32, ggml's order, no contraction. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "quants_grid.h"
#include "quants_iq2.h"
#include "quants_iq2_grids.h"


/* ---------------------------------------------------------------------------------------------- value tables */

uint64_t tk_iq2xxs_grid[256], tk_iq2xs_grid[512], tk_iq2s_grid[1024];
uint8_t tk_iq2_ksigns[128];
uint64_t tk_iq2_sign_bytes[256];

/* the 8 bytes of a grid point: value i is map[bits 2i..2i+1 of k] */
static uint64_t grid_point_bytes(uint16_t k, const uint8_t map[4]) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= (uint64_t)map[(k >> 2 * i) & 3] << 8 * i;
    return v;
}

__attribute__((constructor)) static void fill_iq2_tables(void) {
    static const uint8_t values[4] = {0x08, 0x19, 0x2b, 0};
    for (int k = 0; k < 256; ++k) tk_iq2xxs_grid[k] = grid_point_bytes(iq2xxs_kgrid[k], values);
    for (int k = 0; k < 512; ++k) tk_iq2xs_grid[k] = grid_point_bytes(iq2xs_kgrid[k], values);
    for (int k = 0; k < 1024; ++k) tk_iq2s_grid[k] = grid_point_bytes(iq2s_kgrid[k], values);
    for (int i = 0; i < 128; ++i) tk_iq2_ksigns[i] = (uint8_t)(i | (__builtin_popcount(i) & 1) << 7);
    for (int s = 0; s < 256; ++s) {
        uint64_t v = 0;
        for (int j = 0; j < 8; ++j) v |= (uint64_t)((s >> j) & 1 ? 0xFF : 0x01) << 8 * j;
        tk_iq2_sign_bytes[s] = v;
    }
}

/* ---------------------------------------------------------------------------------------------- search tables */

/* The grids as the quantizers search them (quants_grid.h): tuples of 8 levels 0..2 (2 per sub-block of 16, 4 per
   32 for IQ2_XXS); an off-grid tuple's list holds the points at its 2 (IQ2_XXS, IQ2_XS) or 1 (IQ2_S) smallest
   squared distances; codes below ggml's kmap_size 43692 (levels 0..3) */
#define IQ2_MAP_SIZE 43692
static struct tk_grid GRIDS[3];
static pthread_once_t ONCE[3] = {PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT};

static const struct tk_grid_shape BY_32 = {4, 8, 2, 2}, BY_16 = {2, 8, 2, 2};

static void build_xxs(void) { tk_grid_build(&GRIDS[0], BY_32, iq2xxs_kgrid, 256, IQ2_MAP_SIZE, 2); }
static void build_xs(void) { tk_grid_build(&GRIDS[1], BY_16, iq2xs_kgrid, 512, IQ2_MAP_SIZE, 2); }
static void build_s(void) { tk_grid_build(&GRIDS[2], BY_16, iq2s_kgrid, 1024, IQ2_MAP_SIZE, 1); }

static const struct tk_grid *grid(int which) {
    static void (*const build[3])(void) = {build_xxs, build_xs, build_s};
    pthread_once(&ONCE[which], build[which]);
    return &GRIDS[which];
}

/* ---------------------------------------------------------------------------------------------- quantizers */

/* Magnitudes of 8 values (xval) and their sign bits; with parity, an odd count of negatives is made even by keeping
   the sign of the element of least w·x² (returned in 7 bits, the eighth implied) */
static uint8_t split_signs(const float *xb, const float *w, float *xval, int parity) {
    int nflip = 0;
    uint8_t s = 0;
    for (int i = 0; i < 8; ++i) {
        if (xb[i] >= 0) {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            ++nflip;
            s |= (uint8_t)(1 << i);
        }
    }
    if (!parity) return s;
    if (nflip % 2) {
        int imin = 0;
        float min = w[0] * xb[0] * xb[0];
        for (int i = 1; i < 8; ++i) {
            const float ax = w[i] * xb[i] * xb[i];
            if (ax < min) {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= (uint8_t)(1 << imin);
    }
    return s & 127;
}

/* IQ2_XS / IQ2_S scale of 16 magnitudes (largest max > 0): the best of 19 scales around max/5, each rounding snapped
   to the grid, by (Σw·x·q)²/Σw·q²; the halves that were snapped re-rounded at the fitted scale and refitted
   (tk_grid_fit). L gets the levels (on the grid). */
static float fit16(const struct tk_grid *g, const struct tk_grid_search *gs, const float *xval, const float *weight,
                   const float *waux, float max, int8_t L[16]) {
    float ids[19];
    for (int is = -9; is <= 9; ++is) ids[is + 9] = (5 + is * 0.1f) / max;
    return tk_grid_fit(g, gs, xval, weight, waux, ids, 19, max / 5, TK_REFIT_MOVED, L);
}

/* 4-bit sub-block scale l with d·(2l + 1)/2 nearest the fitted scale */
static inline int sub_scale(float id, float scale) { return clampi(tk_nearest_int(0.5f * (id * scale - 1)), 0, 15); }

static void quantize_block_iq2_xxs(const struct tk_grid *g, const struct tk_grid_search *gs, const float *xbl,
                                   const float *qw, block_iq2_xxs *y) {
    float scales[QK_K / 32], weight[32], waux[32], xval[32];
    int8_t L[32];
    uint8_t signs[4];
    uint32_t q2[2 * (QK_K / 32)] = {0};
    y->d = tk_fp32_to_fp16(0.f);
    float max_scale = 0, sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
    const float sigma2 = sumx2 / QK_K;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const float *xb = xbl + 32 * ib;
        for (int i = 0; i < 32; ++i) weight[i] = qw[32 * ib + i] * sqrtf(sigma2 + xb[i] * xb[i]);
        for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 4; ++k) signs[k] = split_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, 1);
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = max > xval[i] ? max : xval[i];
        scales[ib] = 0;
        if (max < GROUP_MAX_EPS) continue;
        float scale = fit_scales_weighted(32, 4, xval, (uint8_t *)L, weight);
        const float eff_max = scale * 3;
        if (eff_max <= 0) continue;
        /* 13 scales around eff_max/5, then every tuple re-rounded at the fitted scale (tk_grid_fit) */
        float ids[13];
        for (int is = -6; is <= 6; ++is) ids[is + 6] = (5 + is * 0.1f) / eff_max;
        scale = tk_grid_fit(g, gs, xval, weight, waux, ids, 13, scale, TK_REFIT_ALL, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; ++k) signs[k] = (uint8_t)(~signs[k] & 127);
        }
        for (int k = 0; k < 4; ++k) {
            q2[2 * ib] |= (uint32_t)tk_grid_index(g, L + 8 * k) << 8 * k;
            q2[2 * ib + 1] |= (uint32_t)signs[k] << 7 * k;
        }
        scales[ib] = scale;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) {
        memset(y->qs, 0, sizeof(y->qs));
        return;
    }
    const float d = max_scale / 31;
    y->d = tk_fp32_to_fp16(d);
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / 32; ++ib) q2[2 * ib + 1] |= (uint32_t)sub_scale(id, scales[ib]) << 28;
    memcpy(y->qs, q2, sizeof(y->qs));
}

/* IQ2_XS (s = 0) and IQ2_S (s = 1) super-blocks: the same search over sub-blocks of 16, their own weights, signs
   and packing */
static void quantize_block_iq2_16(const struct tk_grid *g, const struct tk_grid_search *gs, int s, const float *xbl, const float *qw, void *vy) {
    float scales[QK_K / 16], weight[16], waux[16], xval[16];
    int8_t L[16];
    uint8_t signs[2];
    block_iq2_xs *xs = vy;
    block_iq2_s *is = vy;
    if (s) memset(is, 0, sizeof(*is));
    else memset(xs, 0, sizeof(*xs));
    float max_scale = 0, sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
    const float sigma2 = s ? 2 * sumx2 / QK_K : sumx2 / QK_K;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float *xb = xbl + 16 * ib;
        if (qw)
            for (int i = 0; i < 16; ++i) weight[i] = qw[16 * ib + i] * sqrtf(sigma2 + xb[i] * xb[i]);
        else
            for (int i = 0; i < 16; ++i) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
        for (int i = 0; i < 16; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 2; ++k) signs[k] = split_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, !s);
        float max = xval[0];
        for (int i = 1; i < 16; ++i) max = max > xval[i] ? max : xval[i];
        scales[ib] = 0;
        memset(L, 0, 16); /* the levels when no scale tried fits (NaN sums) */
        if (max < (s ? 1e-8f : GROUP_MAX_EPS)) continue;
        float scale = fit16(g, gs, xval, weight, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 2; ++k) signs[k] = (uint8_t)(s ? ~signs[k] : ~signs[k] & 127);
        }
        for (int k = 0; k < 2; ++k) {
            const int p = tk_grid_index(g, L + 8 * k), i8 = 2 * ib + k;
            if (s) {
                is->qs[i8] = (uint8_t)(p & 255);
                is->qh[i8 / 4] |= (uint8_t)((p >> 8) << 2 * (i8 % 4));
                is->qs[QK_K / 8 + i8] = signs[k];
            } else {
                xs->qs[i8] = (uint16_t)(p | signs[k] << 9);
            }
        }
        scales[ib] = scale;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) {
        if (!s) memset(xs->qs, 0, sizeof(xs->qs));
        return;
    }
    const float d = max_scale / 31;
    const float id = 1 / d;
    uint8_t *sc = s ? is->scales : xs->scales;
    if (s) is->d = tk_fp32_to_fp16(d * 0.9875f);
    else xs->d = tk_fp32_to_fp16(d);
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const int l = sub_scale(id, scales[ib]);
        if (ib % 2 == 0) sc[ib / 2] = (uint8_t)l;
        else sc[ib / 2] |= (uint8_t)(l << 4);
    }
}

/* IQ2_XXS and IQ2_XS need the weights (ggml asserts them; callers check): NULL leaves the row untouched */
void quantize_row_iq2_xxs_imatrix(const float *x, void *vy, int64_t k, const float *qw) {
    if (!qw) return;
    const struct tk_grid *g = grid(0);
    const struct tk_grid_search *gs = tk_grid_search();
    block_iq2_xxs *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_iq2_xxs(g, gs, x + QK_K * i, qw + QK_K * i, &y[i]);
}

void quantize_row_iq2_xs_imatrix(const float *x, void *vy, int64_t k, const float *qw) {
    if (!qw) return;
    const struct tk_grid *g = grid(1);
    const struct tk_grid_search *gs = tk_grid_search();
    block_iq2_xs *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_iq2_16(g, gs, 0, x + QK_K * i, qw + QK_K * i, &y[i]);
}

void quantize_row_iq2_s_imatrix(const float *x, void *vy, int64_t k, const float *qw) {
    const struct tk_grid *g = grid(2);
    const struct tk_grid_search *gs = tk_grid_search();
    block_iq2_s *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_iq2_16(g, gs, 1, x + QK_K * i, qw ? qw + QK_K * i : NULL, &y[i]);
}

void quantize_row_iq2_s(const float *x, void *y, int64_t k) { quantize_row_iq2_s_imatrix(x, y, k, NULL); }

/* ---------------------------------------------------------------------------------------------- dequantizers */

/* 8 values: grid bytes times dl, negated where the sign bit is set */
static inline void put8(float *y, float dl, uint64_t grid, unsigned signs) {
    for (int j = 0; j < 8; ++j) y[j] = dl * (float)(uint8_t)(grid >> 8 * j) * (signs >> j & 1 ? -1.f : 1.f);
}

void dequantize_row_iq2_xxs(const void *vx, float *y, int64_t k) {
    const block_iq2_xxs *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            uint32_t aux[2];
            memcpy(aux, x[i].qs + 4 * ib, 8);
            const float db = d * (0.5f + (aux[1] >> 28)) * 0.25f;
            for (int l = 0; l < 4; ++l, y += 8)
                put8(y, db, tk_iq2xxs_grid[(aux[0] >> 8 * l) & 255], tk_iq2_ksigns[(aux[1] >> 7 * l) & 127]);
        }
    }
}

void dequantize_row_iq2_xs(const void *vx, float *y, int64_t k) {
    const block_iq2_xs *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float db[2] = {d * (0.5f + (x[i].scales[ib] & 0xf)) * 0.25f, d * (0.5f + (x[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l, y += 8) {
                const uint16_t q = x[i].qs[4 * ib + l];
                put8(y, db[l / 2], tk_iq2xs_grid[q & 511], tk_iq2_ksigns[q >> 9]);
            }
        }
    }
}

/* grid index of group l (0..3) of sub-block ib of an IQ2_S super-block */
static inline int iq2_s_index(const block_iq2_s *x, int ib, int l) {
    return x->qs[4 * ib + l] | ((x->qh[ib] << (8 - 2 * l)) & 0x300);
}

void dequantize_row_iq2_s(const void *vx, float *y, int64_t k) {
    const block_iq2_s *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float db[2] = {d * (0.5f + (x[i].scales[ib] & 0xf)) * 0.25f, d * (0.5f + (x[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l, y += 8)
                put8(y, db[l / 2], tk_iq2s_grid[iq2_s_index(&x[i], ib, l)], x[i].qs[QK_K / 8 + 4 * ib + l]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- dot products */
/* In the float order of ggml's AVX2 kernels (quants_iq2_avx2.c has them): per super-block, 8 exact integer lanes,
   lane l holding Σ over the 32-weight sub-blocks of the scale (2s + 1) times Σ grid·sign·q8 over elements
   4l..4l+3 of each; one fused multiply-add of d per lane; the lanes summed as ggml's hsum_float_8, times 0.125.
   The scalar path thus gives the AVX2 path's bits (ggml's generic order differs in the last place, which a small
   model amplifies in its logits). */

/* the lanes of 32 weights: four grid points, their sign bits, the first 16 scaled by ls1, the last 16 by ls2 */
static inline void lanes_add(int32_t lane[8], const uint64_t g[4], const unsigned signs[4], const int8_t *q8, int ls1,
                             int ls2) {
    for (int e = 0; e < 32; ++e) {
        const int v = (int)(uint8_t)(g[e / 8] >> 8 * (e % 8)) * q8[e] * (signs[e / 8] >> (e % 8) & 1 ? -1 : 1);
        lane[e / 4] += (e < 16 ? ls1 : ls2) * v;
    }
}

TK_Q8_K_SUPER_DOT(tk_vec_dot_iq2_xxs_q8_K, block_iq2_xxs, 0.125f,
    uint32_t aux[2];
    memcpy(aux, x[i].qs + 4 * ib, 8);
    uint64_t g[4];
    unsigned signs[4];
    for (int l = 0; l < 4; ++l) {
        g[l] = tk_iq2xxs_grid[(aux[0] >> 8 * l) & 255];
        signs[l] = tk_iq2_ksigns[(aux[1] >> 7 * l) & 127];
    }
    const int ls = (int)(2 * (aux[1] >> 28) + 1);
    lanes_add(lane, g, signs, q8, ls, ls);)

TK_Q8_K_SUPER_DOT(tk_vec_dot_iq2_xs_q8_K, block_iq2_xs, 0.125f,
    uint64_t g[4];
    unsigned signs[4];
    for (int l = 0; l < 4; ++l) {
        const uint16_t q = x[i].qs[4 * ib + l];
        g[l] = tk_iq2xs_grid[q & 511];
        signs[l] = tk_iq2_ksigns[q >> 9];
    }
    const uint8_t sc = x[i].scales[ib];
    lanes_add(lane, g, signs, q8, 2 * (sc & 0xf) + 1, 2 * (sc >> 4) + 1);)

TK_Q8_K_SUPER_DOT(tk_vec_dot_iq2_s_q8_K, block_iq2_s, 0.125f,
    uint64_t g[4];
    unsigned signs[4];
    for (int l = 0; l < 4; ++l) {
        g[l] = tk_iq2s_grid[iq2_s_index(&x[i], ib, l)];
        signs[l] = x[i].qs[QK_K / 8 + 4 * ib + l];
    }
    const uint8_t sc = x[i].scales[ib];
    lanes_add(lane, g, signs, q8, 2 * (sc & 0xf) + 1, 2 * (sc >> 4) + 1);)
