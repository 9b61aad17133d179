/* What the IQ2 and IQ3 quantizers share (ggml's quantize_row_iq2_*_impl and quantize_row_iq3_*_impl): their grids
   as the quantizers search them (ggml's iq2xs_init_impl / iq3xs_init_impl), and the scale search of a sub-block over
   a grid: its magnitudes rounded at every step of the search at once, each step in a lane of its own, the steps'
   weighted sums, and the nearest grid point of each tuple of levels off the grid among its neighbour list. Scalar
   (quants_grid.c), AVX2 (quants_grid_avx2.c) and AVX512 (quants_grid_avx512.c), all with the scalar bits. */
#ifndef TOOLKIT_QUANTS_GRID_H
#define TOOLKIT_QUANTS_GRID_H

#include "quants.h"

#define TK_GRID_LANES 32 /* steps of a search at most: the row length of the transposed levels */

/* A sub-block as the searches see it: ntuples tuples of tuple_len magnitudes, each rounded to a level 0..top; a
   tuple's code holds level i in bits [bits·i, bits·i + bits). */
struct tk_grid_shape {
    int ntuples, tuple_len, bits, top;
};

/* The levels clamp(nearest(0.5·(ids[s]·x − 1)), 0, top) of every magnitude e at every step s < nlanes (a multiple
   of 8), Lt[e·TK_GRID_LANES + s], and each tuple's code, u[k·TK_GRID_LANES + s]; nearest as tk_nearest_int */
typedef void (*tk_grid_levels_fn)(const struct tk_grid_shape *shape, const float *xval, const float *ids, int nlanes,
                                  int8_t *Lt, int32_t *u);
/* each step's Σ (w·x)·q and Σ (w·q)·q over the n elements in their order, q = 2l + 1 */
typedef void (*tk_grid_sums_fn)(int n, const float *xval, const float *w, const int8_t *Lt, int nlanes, float *sumqx,
                                float *sumq2);
/* Of `count` neighbours whose value i < nvalues is block[i·stride + j] (a neighbour list's block: below), the
   position of the first with the smallest Σ (w·(scale·q − x))·(scale·q − x), summed in order, below FLT_MAX; 0 when
   none is (ggml asserts there; its first neighbour is kept then) */
typedef int (*tk_grid_nearest_fn)(const int8_t *block, int stride, int nvalues, int count, const float *x,
                                  const float *w, float scale);

struct tk_grid_search {
    tk_grid_levels_fn levels;
    tk_grid_sums_fn sums;
    tk_grid_nearest_fn nearest;
};

/* Σ (w·x)·q and Σ (w·q)·q over n elements in their order, q = 2·L + 1: one step's sums */
void tk_grid_level_sums(int n, const float *xval, const float *w, const int8_t *L, float *sumqx, float *sumq2);

/* the searches this CPU runs now (the scalar ones when SIMD is off) */
const struct tk_grid_search *tk_grid_search(void);

/* A neighbour list's block: value i of neighbour j at [i·stride + j], stride the count rounded up to 16, zeros
   after the count (the SIMD searches' whole-register loads). points: nvalues values per grid point. */
static inline int tk_grid_block_stride(int count) { return (count + 15) & ~15; }
void tk_grid_block_fill(int8_t *block, int nvalues, int count, const uint16_t *list, const int8_t *points);

/* A grid as the quantizers search it: its points' values 2l + 1, the point of each tuple code on the grid and, for
   each code off it below map_size, the list of its nearest points (every point at one of the nwant smallest squared
   distances, by distance then index: ggml's lists) with that list's block. */
struct tk_grid_list {
    int32_t first, block, count; /* in neighbours, in blocks, and the list's length */
};
struct tk_grid {
    struct tk_grid_shape shape;
    int size, map_size;
    int8_t *points; /* point p's value i at [p·tuple_len + i] */
    int32_t *map;   /* code → its point, or -(l + 1) for list l */
    struct tk_grid_list *lists;
    uint16_t *neighbours;
    int8_t *blocks;
};

/* g for the `size` points whose codes are codes[] (level i of a point in bits bits·i, as the tuples'), the codes
   below map_size, nwant distances per list; aborts when out of memory (once per process and grid) */
void tk_grid_build(struct tk_grid *g, struct tk_grid_shape shape, const uint16_t *codes, int size, int map_size,
                   int nwant);
/* the point of the levels L (a tuple's, on the grid) and 0 for levels off it (left only where ggml aborts) */
int tk_grid_index(const struct tk_grid *g, const int8_t *L);

/* After the steps, which tuples the search rounds again at the kept scale (then refitting it): those the kept step
   moved off the grid (none when no step was kept), all of them when the kept step moved any (or no step was kept),
   or all of them always */
enum tk_grid_refit { TK_REFIT_MOVED, TK_REFIT_ALL_IF_MOVED, TK_REFIT_ALL };
/* The scale of a sub-block's magnitudes xval (weights w, their roots wa: the neighbour search's) on grid g, and its
   levels L (on the grid): the best of the nst ≤ TK_GRID_LANES steps of inverse scales ids by (Σw·x·q)²/Σw·q² (ggml's
   order: the first best kept; scale when none is), each tuple off the grid moved to its nearest point; then the
   refit. L is left as it was when no step is kept and the refit rounds nothing. */
float tk_grid_fit(const struct tk_grid *g, const struct tk_grid_search *gs, const float *xval, const float *w,
                  const float *wa, const float *ids, int nst, float scale, enum tk_grid_refit refit, int8_t *L);

void tk_grid_levels_avx2(const struct tk_grid_shape *shape, const float *xval, const float *ids, int nlanes,
                         int8_t *Lt, int32_t *u);
void tk_grid_sums_avx2(int n, const float *xval, const float *w, const int8_t *Lt, int nlanes, float *sumqx,
                       float *sumq2);
int tk_grid_nearest_avx2(const int8_t *block, int stride, int nvalues, int count, const float *x, const float *w,
                         float scale);
int tk_grid_nearest_avx512(const int8_t *block, int stride, int nvalues, int count, const float *x, const float *w,
                           float scale);

#endif
