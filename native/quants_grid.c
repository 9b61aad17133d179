/* What the IQ2/IQ3 quantizers share (quants_grid.h): the grids' search tables, the scale search over a grid, the
   scalar forms of its steps (the bits every SIMD form reproduces) and the choice of the forms this CPU runs. Same
   float rules as quants_k.c: fp32, ggml's order, no contraction. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quants_grid.h"

static void levels_scalar(const struct tk_grid_shape *shape, const float *xval, const float *ids, int nlanes,
                          int8_t *Lt, int32_t *u) {
    for (int s = 0; s < nlanes; ++s)
        for (int k = 0; k < shape->ntuples; ++k) {
            int32_t code = 0;
            for (int i = 0; i < shape->tuple_len; ++i) {
                const int e = k * shape->tuple_len + i;
                const int l = clampi(tk_nearest_int(0.5f * (ids[s] * xval[e] - 1)), 0, shape->top);
                Lt[e * TK_GRID_LANES + s] = (int8_t)l;
                code |= l << shape->bits * i;
            }
            u[k * TK_GRID_LANES + s] = code;
        }
}

void tk_grid_level_sums(int n, const float *xval, const float *w, const int8_t *L, float *sumqx, float *sumq2) {
    float sqx = 0, sq2 = 0;
    for (int i = 0; i < n; ++i) {
        const float q = 2 * L[i] + 1;
        sqx += w[i] * xval[i] * q;
        sq2 += w[i] * q * q;
    }
    *sumqx = sqx;
    *sumq2 = sq2;
}

static void sums_scalar(int n, const float *xval, const float *w, const int8_t *Lt, int nlanes, float *sumqx,
                        float *sumq2) {
    int8_t L[64]; /* n <= 64 */
    for (int s = 0; s < nlanes; ++s) {
        for (int i = 0; i < n; ++i) L[i] = Lt[i * TK_GRID_LANES + s];
        tk_grid_level_sums(n, xval, w, L, sumqx + s, sumq2 + s);
    }
}

static int nearest_scalar(const int8_t *block, int stride, int nvalues, int count, const float *x, const float *w,
                          float scale) {
    float best_d2 = FLT_MAX;
    int best = 0;
    for (int j = 0; j < count; ++j) {
        float d2 = 0;
        for (int i = 0; i < nvalues; ++i) {
            const float diff = scale * block[i * stride + j] - x[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            best = j;
        }
    }
    return best;
}

void tk_grid_block_fill(int8_t *block, int nvalues, int count, const uint16_t *list, const int8_t *points) {
    const int stride = tk_grid_block_stride(count);
    memset(block, 0, (size_t)nvalues * (size_t)stride);
    for (int j = 0; j < count; ++j)
        for (int i = 0; i < nvalues; ++i) block[i * stride + j] = points[(size_t)list[j] * (size_t)nvalues + i];
}

const struct tk_grid_search *tk_grid_search(void) {
    static const struct tk_grid_search scalar = {levels_scalar, sums_scalar, nearest_scalar};
#if defined(__x86_64__) || defined(__i386__)
    static const struct tk_grid_search avx2 = {tk_grid_levels_avx2, tk_grid_sums_avx2, tk_grid_nearest_avx2};
    static const struct tk_grid_search avx512 = {tk_grid_levels_avx2, tk_grid_sums_avx2, tk_grid_nearest_avx512};
    if (tk_use_avx512()) return &avx512;
    if (tk_use_simd()) return &avx2;
#endif
    return &scalar;
}

/* ---------------------------------------------------------------------------------------------- the grids */

static inline int level_of(const struct tk_grid_shape *sh, int32_t code, int i) {
    return (code >> sh->bits * i) & ((1 << sh->bits) - 1);
}

/* The nearest points of the code u (off the grid) at its nwant smallest squared distances, by distance then index
   (ggml's sort of (distance, index) pairs cut after the nwant-th distinct distance), into out (room for every
   point); returns their count. d2: a point's distance, used: which distances occur (nd of them). */
static int nearest_points(const struct tk_grid *g, int32_t u, int nwant, int *d2, char *used, int nd, uint16_t *out) {
    const int len = g->shape.tuple_len;
    int8_t pos[8];
    for (int i = 0; i < len; ++i) pos[i] = (int8_t)(2 * level_of(&g->shape, u, i) + 1);
    memset(used, 0, (size_t)nd);
    for (int p = 0; p < g->size; ++p) {
        int d = 0;
        for (int i = 0; i < len; ++i) d += (g->points[p * len + i] - pos[i]) * (g->points[p * len + i] - pos[i]);
        d2[p] = d;
        used[d] = 1;
    }
    int n = 0, have = 0;
    for (int d = 0; d < nd && have < nwant; ++d) {
        if (!used[d]) continue;
        ++have;
        for (int p = 0; p < g->size; ++p)
            if (d2[p] == d) out[n++] = (uint16_t)p;
    }
    return n;
}

void tk_grid_build(struct tk_grid *g, struct tk_grid_shape shape, const uint16_t *codes, int size, int map_size,
                   int nwant) {
    const int len = shape.tuple_len, top_value = 2 * ((1 << shape.bits) - 1);
    const int nd = len * top_value * top_value + 1; /* distances 0 .. len·(2·(2^bits − 1))² */
    g->shape = shape;
    g->size = size;
    g->map_size = map_size;
    g->points = malloc((size_t)size * (size_t)len);
    g->map = malloc(sizeof(int32_t) * (size_t)map_size);
    int *d2 = malloc(sizeof(int) * (size_t)size);
    char *used = malloc((size_t)nd);
    if (!g->points || !g->map || !d2 || !used) goto fail;
    for (int u = 0; u < map_size; ++u) g->map[u] = -1;
    for (int p = 0; p < size; ++p) {
        for (int i = 0; i < len; ++i) g->points[p * len + i] = (int8_t)(2 * level_of(&shape, codes[p], i) + 1);
        g->map[codes[p]] = p;
    }
    /* the lists (growing the neighbours as they come), then their blocks */
    g->lists = malloc(sizeof(*g->lists) * (size_t)(map_size - size));
    if (!g->lists) goto fail;
    g->neighbours = NULL;
    size_t cap = 0;
    int32_t nlists = 0, first = 0, block = 0;
    for (int u = 0; u < map_size; ++u) {
        if (g->map[u] >= 0) continue;
        if ((size_t)first + (size_t)size > cap) {
            cap = 2 * ((size_t)first + (size_t)size);
            uint16_t *grown = realloc(g->neighbours, cap * sizeof(uint16_t));
            if (!grown) goto fail;
            g->neighbours = grown;
        }
        const int n = nearest_points(g, u, nwant, d2, used, nd, g->neighbours + first);
        g->lists[nlists] = (struct tk_grid_list){first, block, n};
        g->map[u] = -(nlists + 1);
        ++nlists;
        first += n;
        block += len * tk_grid_block_stride(n);
    }
    g->blocks = malloc((size_t)block);
    if (!g->blocks) goto fail;
    for (int32_t l = 0; l < nlists; ++l)
        tk_grid_block_fill(g->blocks + g->lists[l].block, len, g->lists[l].count, g->neighbours + g->lists[l].first,
                           g->points);
    free(d2);
    free(used);
    return;
fail:
    fprintf(stderr, "toolkit: out of memory building the IQ2/IQ3 quantization tables\n");
    abort();
}

int tk_grid_index(const struct tk_grid *g, const int8_t *L) {
    int32_t u = 0;
    for (int i = 0; i < g->shape.tuple_len; ++i) u |= (L[i] & ((1 << g->shape.bits) - 1)) << g->shape.bits * i;
    return u < g->map_size && g->map[u] >= 0 ? g->map[u] : 0;
}

/* ---------------------------------------------------------------------------------------------- the search */

/* the nearest point (weights w) to scale·q of the tuple magnitudes x in list l; its levels into L */
static int nearest_in_list(const struct tk_grid *g, const struct tk_grid_search *gs, int l, const float *x,
                           const float *w, float scale, int8_t *L) {
    const struct tk_grid_list *list = &g->lists[l];
    const int len = g->shape.tuple_len;
    const int p = g->neighbours[list->first + gs->nearest(g->blocks + list->block, tk_grid_block_stride(list->count),
                                                          len, list->count, x, w, scale)];
    for (int i = 0; i < len; ++i) L[i] = (int8_t)((g->points[p * len + i] - 1) / 2);
    return p;
}

/* one tuple rounded at inverse scale id, then moved to its nearest point for scale when off the grid */
static void round_to_grid(const struct tk_grid *g, const struct tk_grid_search *gs, const float *x, const float *w,
                          float id, float scale, int8_t *L) {
    int32_t u = 0;
    for (int i = 0; i < g->shape.tuple_len; ++i) {
        L[i] = (int8_t)clampi(tk_nearest_int(0.5f * (id * x[i] - 1)), 0, g->shape.top);
        u |= L[i] << g->shape.bits * i;
    }
    if (g->map[u] < 0) nearest_in_list(g, gs, -g->map[u] - 1, x, w, scale, L);
}

float tk_grid_fit(const struct tk_grid *g, const struct tk_grid_search *gs, const float *xval, const float *w,
                  const float *wa, const float *ids, int nst, float scale, enum tk_grid_refit refit, int8_t *L) {
    const int len = g->shape.tuple_len, ntuples = g->shape.ntuples, n = ntuples * len, nlanes = (nst + 7) & ~7;
    float sumqx[TK_GRID_LANES], sumq2[TK_GRID_LANES];
    int8_t Lt[32 * TK_GRID_LANES];  /* n <= 32 */
    int32_t u[8 * TK_GRID_LANES];   /* ntuples <= 8 */
    unsigned moved[TK_GRID_LANES]; /* bit k: tuple k of the step was off the grid */
    float id_lanes[TK_GRID_LANES] = {0};
    memcpy(id_lanes, ids, sizeof(float) * (size_t)nst);
    gs->levels(&g->shape, xval, id_lanes, nlanes, Lt, u);
    for (int s = 0; s < nst; ++s) {
        const float this_scale = 1 / ids[s];
        moved[s] = 0;
        for (int k = 0; k < ntuples; ++k) {
            const int32_t m = g->map[u[k * TK_GRID_LANES + s]];
            if (m >= 0) continue;
            moved[s] |= 1u << k;
            int8_t l[8];
            nearest_in_list(g, gs, -m - 1, xval + len * k, wa + len * k, this_scale, l);
            for (int i = 0; i < len; ++i) Lt[(len * k + i) * TK_GRID_LANES + s] = l[i];
        }
    }
    gs->sums(n, xval, w, Lt, nlanes, sumqx, sumq2);
    float best = 0;
    int kept = -1;
    for (int s = 0; s < nst; ++s) {
        if (sumq2[s] > 0 && sumqx[s] * sumqx[s] > best * sumq2[s]) {
            scale = sumqx[s] / sumq2[s];
            best = scale * sumqx[s];
            kept = s;
        }
    }
    if (kept >= 0)
        for (int i = 0; i < n; ++i) L[i] = Lt[i * TK_GRID_LANES + kept];
    const unsigned all = (1u << ntuples) - 1;
    unsigned redo = refit == TK_REFIT_ALL ? all : kept < 0 ? (refit == TK_REFIT_MOVED ? 0 : all) : moved[kept];
    if (refit == TK_REFIT_ALL_IF_MOVED && redo) redo = all;
    if (redo && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < ntuples; ++k)
            if (redo >> k & 1) round_to_grid(g, gs, xval + len * k, wa + len * k, id, scale, L + len * k);
        float sqx, sq2;
        tk_grid_level_sums(n, xval, w, L, &sqx, &sq2);
        if (sq2 > 0) scale = sqx / sq2;
    }
    return scale;
}
