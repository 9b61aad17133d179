/* The 3-bit lattice types IQ3_XXS (super-blocks of 256: an fp16 scale, 64 one-byte indices into a grid of 256
   points of 4 values, and per 32 elements a 32-bit word of 4-bit scale and four 7-bit sign groups whose eighth sign is
   the parity) and IQ3_S (an fp16 scale, 9-bit indices into a grid of 512 points, explicit signs, 4-bit scales per 32).
   Quantizers bit-exact with ggml's quantize_iq3_xxs / quantize_iq3_s (what ggml_quantize_chunk runs, with or without
   an importance matrix), the grids and their neighbour lists built as ggml's iq3xs_init_impl builds them (once, on
   first use), dequantizers, and the scalar dot products in the float order of ggml's AVX2 kernels (the SIMD ones' bits).
   Same float rules as quants_k.c: fp32, ggml's order, no contraction. */
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
#include "quants_iq3.h"

#define IQ3_KMAX 8                /* 3-bit levels 0..7, value 2l + 1 */
#define IQ3_MAP_SIZE 4096         /* every 4-tuple of levels, 3 bits each */
#define IQ3_XXS_GROUP_EPS 1e-8f   /* ggml's GROUP_MAX_EPS_IQ3_XXS */

/* The grid points as 4 levels of 3 bits (level i in bits 3i..3i+2), in grid-index order (ggml's kgrid_256/512). */
static const uint16_t IQ3_XXS_POINTS[256] = {
    0,    2,    4,    9,    11,   15,   16,   18,   25,   34,   59,   61,   65,   67,   72,   74,   81,   85,   88,
    90,   97,   108,  120,  128,  130,  132,  137,  144,  146,  153,  155,  159,  169,  175,  189,  193,  199,  200,
    202,  213,  248,  267,  287,  292,  303,  315,  317,  321,  327,  346,  362,  413,  436,  456,  460,  462,  483,
    497,  513,  515,  520,  522,  529,  531,  536,  538,  540,  551,  552,  576,  578,  585,  592,  594,  641,  643,
    648,  650,  657,  664,  698,  704,  706,  720,  729,  742,  758,  769,  773,  808,  848,  852,  870,  889,  901,
    978,  992,  1024, 1026, 1033, 1035, 1040, 1042, 1046, 1049, 1058, 1089, 1091, 1093, 1096, 1098, 1105, 1112, 1139,
    1143, 1144, 1152, 1154, 1161, 1167, 1168, 1170, 1183, 1184, 1197, 1217, 1224, 1228, 1272, 1276, 1309, 1323, 1347,
    1367, 1377, 1404, 1473, 1475, 1486, 1509, 1537, 1544, 1546, 1553, 1555, 1576, 1589, 1594, 1600, 1602, 1616, 1625,
    1636, 1638, 1665, 1667, 1672, 1685, 1706, 1722, 1737, 1755, 1816, 1831, 1850, 1856, 1862, 1874, 1901, 1932, 1950,
    1971, 2011, 2032, 2052, 2063, 2077, 2079, 2091, 2095, 2172, 2192, 2207, 2208, 2224, 2230, 2247, 2277, 2308, 2345,
    2356, 2389, 2403, 2424, 2501, 2504, 2506, 2520, 2570, 2593, 2616, 2624, 2630, 2646, 2669, 2700, 2714, 2746, 2754,
    2795, 2824, 2835, 2839, 2874, 2882, 2905, 2984, 3028, 3042, 3092, 3108, 3110, 3124, 3153, 3185, 3215, 3252, 3288,
    3294, 3364, 3397, 3434, 3483, 3523, 3537, 3587, 3589, 3591, 3592, 3610, 3626, 3670, 3680, 3722, 3749, 3754, 3776,
    3789, 3803, 3824, 3857, 3873, 3904, 3906, 3924, 3992,
};

static const uint16_t IQ3_S_POINTS[512] = {
    0,    1,    2,    5,    7,    8,    9,    10,   12,   14,   16,   17,   21,   27,   32,   34,   37,   39,   41,
    43,   48,   50,   57,   60,   63,   64,   65,   66,   68,   72,   73,   77,   80,   83,   87,   89,   93,   100,
    113,  117,  122,  128,  129,  133,  135,  136,  139,  142,  145,  149,  152,  156,  162,  165,  167,  169,  171,
    184,  187,  195,  201,  205,  208,  210,  217,  219,  222,  228,  232,  234,  247,  249,  253,  256,  267,  271,
    273,  276,  282,  288,  291,  297,  312,  322,  324,  336,  338,  342,  347,  353,  357,  359,  374,  379,  390,
    393,  395,  409,  426,  441,  448,  450,  452,  464,  466,  470,  475,  488,  492,  512,  513,  514,  516,  520,
    521,  523,  525,  527,  528,  530,  537,  540,  542,  556,  558,  561,  570,  576,  577,  579,  582,  584,  588,
    593,  600,  603,  609,  616,  618,  632,  638,  640,  650,  653,  655,  656,  660,  666,  672,  675,  685,  688,
    698,  705,  708,  711,  712,  715,  721,  727,  728,  732,  737,  754,  760,  771,  773,  778,  780,  793,  795,
    802,  806,  808,  812,  833,  840,  843,  849,  856,  858,  873,  912,  916,  919,  932,  934,  961,  963,  968,
    970,  977,  989,  993,  1010, 1016, 1024, 1025, 1027, 1029, 1031, 1032, 1034, 1036, 1038, 1041, 1043, 1047, 1048,
    1050, 1057, 1059, 1061, 1064, 1066, 1079, 1080, 1083, 1085, 1088, 1090, 1096, 1099, 1103, 1106, 1109, 1113, 1116,
    1122, 1129, 1153, 1156, 1159, 1169, 1171, 1176, 1183, 1185, 1195, 1199, 1209, 1212, 1216, 1218, 1221, 1225, 1234,
    1236, 1241, 1243, 1250, 1256, 1270, 1281, 1287, 1296, 1299, 1306, 1309, 1313, 1338, 1341, 1348, 1353, 1362, 1375,
    1376, 1387, 1400, 1408, 1410, 1415, 1425, 1453, 1457, 1477, 1481, 1494, 1496, 1507, 1512, 1538, 1545, 1547, 1549,
    1551, 1554, 1561, 1563, 1565, 1570, 1572, 1575, 1577, 1587, 1593, 1601, 1603, 1605, 1612, 1617, 1619, 1632, 1648,
    1658, 1662, 1664, 1674, 1680, 1690, 1692, 1704, 1729, 1736, 1740, 1745, 1747, 1751, 1752, 1761, 1763, 1767, 1773,
    1787, 1795, 1801, 1806, 1810, 1817, 1834, 1840, 1844, 1857, 1864, 1866, 1877, 1882, 1892, 1902, 1915, 1934, 1953,
    1985, 1987, 2000, 2002, 2013, 2048, 2052, 2058, 2064, 2068, 2071, 2074, 2081, 2088, 2104, 2114, 2119, 2121, 2123,
    2130, 2136, 2141, 2147, 2153, 2157, 2177, 2179, 2184, 2189, 2193, 2203, 2208, 2223, 2226, 2232, 2244, 2249, 2251,
    2256, 2258, 2265, 2269, 2304, 2306, 2324, 2335, 2336, 2361, 2373, 2375, 2385, 2418, 2443, 2460, 2480, 2504, 2509,
    2520, 2531, 2537, 2562, 2568, 2572, 2578, 2592, 2596, 2599, 2602, 2614, 2620, 2625, 2627, 2629, 2634, 2641, 2650,
    2682, 2688, 2697, 2707, 2712, 2718, 2731, 2754, 2759, 2760, 2775, 2788, 2793, 2805, 2811, 2817, 2820, 2832, 2842,
    2854, 2890, 2902, 2921, 2923, 2978, 3010, 3012, 3026, 3081, 3083, 3085, 3097, 3099, 3120, 3136, 3152, 3159, 3188,
    3210, 3228, 3234, 3245, 3250, 3256, 3264, 3276, 3281, 3296, 3349, 3363, 3378, 3392, 3395, 3420, 3440, 3461, 3488,
    3529, 3531, 3584, 3588, 3591, 3600, 3602, 3614, 3616, 3628, 3634, 3650, 3657, 3668, 3683, 3685, 3713, 3716, 3720,
    3726, 3729, 3736, 3753, 3778, 3802, 3805, 3819, 3841, 3845, 3851, 3856, 3880, 3922, 3938, 3970, 3993, 4032,
};

/* The dequantization grids (ggml-common.h's iq3xxs_grid / iq3s_grid): byte i of entry k is the value of level i of
   point k, {4, 12, 20, 28, 36, 44, 52, 62}[l] for IQ3_XXS, 2l + 1 for IQ3_S; and ggml's keven_signs_q2xs: for
   each 7-bit sign group (eighth sign its parity), 8 bytes of ±1 (-1 where the sign bit is set). */
uint32_t tk_iq3xxs_grid[256], tk_iq3s_grid[512];
uint64_t tk_iq3_even_signs[128];

static const uint8_t XXS_VALUES[IQ3_KMAX] = {4, 12, 20, 28, 36, 44, 52, 62};

static inline int level(int point, int i) { return (point >> 3 * i) & 7; }

__attribute__((constructor)) static void fill_iq3_tables(void) {
    for (int k = 0; k < 256; ++k)
        for (int i = 0; i < 4; ++i) tk_iq3xxs_grid[k] |= (uint32_t)XXS_VALUES[level(IQ3_XXS_POINTS[k], i)] << 8 * i;
    for (int k = 0; k < 512; ++k)
        for (int i = 0; i < 4; ++i) tk_iq3s_grid[k] |= (uint32_t)(2 * level(IQ3_S_POINTS[k], i) + 1) << 8 * i;
    for (int s = 0; s < 128; ++s) {
        const int signs = s | (__builtin_parity((unsigned)s) << 7);
        uint64_t v = 0;
        for (int j = 0; j < 8; ++j) v |= (uint64_t)(signs >> j & 1 ? 0xFF : 0x01) << 8 * j;
        tk_iq3_even_signs[s] = v;
    }
}

/* ---------------------------------------------------------------------------------------------- the search grid */

/* The grids as the quantizers search them (quants_grid.h): 8 tuples of 4 levels 0..7 per sub-block of 32, every
   point at one of the 2 (256-point grid) or 3 (512) smallest squared distances in an off-grid tuple's list */
static const struct tk_grid_shape IQ3_SHAPE = {8, 4, 3, IQ3_KMAX - 1};
static struct tk_grid GRID_XXS, GRID_S;
static pthread_once_t ONCE_XXS = PTHREAD_ONCE_INIT, ONCE_S = PTHREAD_ONCE_INIT;

static void build_xxs(void) { tk_grid_build(&GRID_XXS, IQ3_SHAPE, IQ3_XXS_POINTS, 256, IQ3_MAP_SIZE, 2); }
static void build_s(void) { tk_grid_build(&GRID_S, IQ3_SHAPE, IQ3_S_POINTS, 512, IQ3_MAP_SIZE, 3); }

static const struct tk_grid *grid_xxs(void) {
    pthread_once(&ONCE_XXS, build_xxs);
    return &GRID_XXS;
}

static const struct tk_grid *grid_s(void) {
    pthread_once(&ONCE_S, build_s);
    return &GRID_S;
}

/* ---------------------------------------------------------------------------------------------- the quantizers */

/* The scale and levels L of 32 magnitudes xval (weights w, their square roots wa) on grid g, as ggml's
   quantize_row_iq3_*_impl: the best of 2·nsteps + 1 stretched grids (15 + 0.2·is)/max, then the refit
   (tk_grid_fit) */
static float fit_lattice(const struct tk_grid *g, const struct tk_grid_search *gs, const float *xval, const float *w,
                         const float *wa, float max, int nsteps, enum tk_grid_refit refit, int8_t L[32]) {
    float ids[TK_GRID_LANES];
    for (int s = 0; s < 2 * nsteps + 1; ++s) ids[s] = (2 * IQ3_KMAX - 1 + (s - nsteps) * 0.2f) / max;
    return tk_grid_fit(g, gs, xval, w, wa, ids, 2 * nsteps + 1, max / (2 * IQ3_KMAX - 1), refit, L);
}

/* the importance of each of 32 elements: qw·sqrt(sigma2 + x²) with a matrix, x² without; and their square roots */
static inline void element_weights(const float *xb, const float *qw, float sigma2, float *w, float *wa) {
    for (int i = 0; i < 32; ++i) w[i] = qw ? qw[i] * sqrtf(sigma2 + xb[i] * xb[i]) : xb[i] * xb[i];
    for (int i = 0; i < 32; ++i) wa[i] = sqrtf(w[i]);
}

static inline float superblock_sigma2(const float *x) {
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += x[i] * x[i];
    return 2 * sumx2 / QK_K;
}

/* the grid index of each 4-tuple of the 32 levels L (always on the grid: ggml aborts otherwise) */
static inline void tuple_indices(const struct tk_grid *g, const int8_t *L, int index[8]) {
    for (int k = 0; k < 8; ++k) index[k] = tk_grid_index(g, L + 4 * k);
}

static void quantize_iq3_xxs_block(const float *x, const float *qw, const struct tk_grid_search *gs, block_iq3_xxs *y) {
    const struct tk_grid *g = grid_xxs();
    float scales[QK_K / 32], w[32], wa[32], xval[32];
    int8_t L[32];
    uint8_t q3[3 * QK_K / 8];
    uint32_t signs_scales[QK_K / 32] = {0};
    memset(q3, 0, sizeof q3);
    y->d = tk_fp32_to_fp16(0.f);
    float max_scale = 0;
    const float sigma2 = superblock_sigma2(x);
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const float *xb = x + 32 * ib;
        element_weights(xb, qw ? qw + 32 * ib : NULL, sigma2, w, wa);
        /* magnitudes, and 7 signs per 8 with an even count of negatives: an odd count flips the least important */
        uint8_t signs[4];
        for (int k = 0; k < 4; ++k) {
            int nflip = 0;
            uint8_t s = 0;
            for (int i = 0; i < 8; ++i) {
                if (xb[8 * k + i] >= 0) xval[8 * k + i] = xb[8 * k + i];
                else {
                    xval[8 * k + i] = -xb[8 * k + i];
                    ++nflip;
                    s |= (uint8_t)(1 << i);
                }
            }
            if (nflip % 2) {
                int imin = 0;
                float min = w[8 * k] * xb[8 * k] * xb[8 * k];
                for (int i = 1; i < 8; ++i) {
                    const float ax = w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                    if (ax < min) { min = ax; imin = i; }
                }
                xval[8 * k + imin] = -xval[8 * k + imin];
                s ^= (uint8_t)(1 << imin);
            }
            signs[k] = s & 127;
        }
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = max > xval[i] ? max : xval[i];
        memset(L, 0, 32);
        if (max < IQ3_XXS_GROUP_EPS) {
            scales[ib] = 0;
            continue;
        }
        float scale = fit_lattice(g, gs, xval, w, wa, max, 15, TK_REFIT_MOVED, L);
        if (scale < 0) { /* never expected; the scale is stored unsigned */
            scale = -scale;
            for (int k = 0; k < 4; ++k) signs[k] = (uint8_t)(~signs[k] & 127);
        }
        int index[8];
        tuple_indices(g, L, index);
        for (int k = 0; k < 8; ++k) q3[8 * ib + k] = (uint8_t)index[k];
        signs_scales[ib] = signs[0] | (signs[1] << 7) | (signs[2] << 14) | ((uint32_t)signs[3] << 21);
        scales[ib] = scale;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) {
        memset(y->qs, 0, sizeof y->qs);
        return;
    }
    const float d = max_scale / 31;
    y->d = tk_fp32_to_fp16(d * 1.0125f);
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const int l = clampi(tk_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
        signs_scales[ib] |= (uint32_t)l << 28;
    }
    memcpy(y->qs, q3, QK_K / 4);
    memcpy(y->qs + QK_K / 4, signs_scales, sizeof signs_scales);
}

static void quantize_iq3_s_block(const float *x, const float *qw, const struct tk_grid_search *gs, block_iq3_s *y) {
    const struct tk_grid *g = grid_s();
    float scales[QK_K / 32], w[32], wa[32], xval[32];
    int8_t L[32];
    memset(y, 0, sizeof *y);
    y->d = tk_fp32_to_fp16(0.f);
    /* ggml writes each kept sub-block's indices and signs after the previous kept one's: a zero sub-block leaves no
       gap, so those of the later ones move down (the dequantizer reads them by position) */
    uint8_t *qs = y->qs, *signs_out = y->signs;
    float max_scale = 0;
    const float sigma2 = superblock_sigma2(x);
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const float *xb = x + 32 * ib;
        element_weights(xb, qw ? qw + 32 * ib : NULL, sigma2, w, wa);
        uint8_t signs[4];
        for (int k = 0; k < 4; ++k) {
            uint8_t s = 0;
            for (int i = 0; i < 8; ++i) {
                if (xb[8 * k + i] >= 0) xval[8 * k + i] = xb[8 * k + i];
                else {
                    xval[8 * k + i] = -xb[8 * k + i];
                    s |= (uint8_t)(1 << i);
                }
            }
            signs[k] = s;
        }
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = max > xval[i] ? max : xval[i];
        memset(L, 0, 32);
        if (!max) {
            scales[ib] = 0;
            continue;
        }
        float scale = fit_lattice(g, gs, xval, w, wa, max, 9, TK_REFIT_ALL_IF_MOVED, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; ++k) signs[k] = (uint8_t)~signs[k];
        }
        int index[8];
        tuple_indices(g, L, index);
        for (int k = 0; k < 8; ++k) {
            qs[k] = (uint8_t)(index[k] & 255);
            y->qh[ib] |= (uint8_t)((index[k] >> 8) << k);
        }
        qs += 8;
        memcpy(signs_out, signs, 4);
        signs_out += 4;
        scales[ib] = scale;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) return;
    const float d = max_scale / 31;
    y->d = tk_fp32_to_fp16(d * 1.033f);
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / 32; ib += 2) {
        const int l1 = clampi(tk_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
        const int l2 = clampi(tk_nearest_int(0.5f * (id * scales[ib + 1] - 1)), 0, 15);
        y->scales[ib / 2] = (uint8_t)(l1 | (l2 << 4));
    }
}

void quantize_row_iq3_xxs_imatrix(const float *x, void *vy, int64_t k, const float *qw) {
    block_iq3_xxs *y = vy;
    const struct tk_grid_search *gs = tk_grid_search();
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_iq3_xxs_block(x + QK_K * i, qw ? qw + QK_K * i : NULL, gs, &y[i]);
}

void quantize_row_iq3_s_imatrix(const float *x, void *vy, int64_t k, const float *qw) {
    block_iq3_s *y = vy;
    const struct tk_grid_search *gs = tk_grid_search();
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_iq3_s_block(x + QK_K * i, qw ? qw + QK_K * i : NULL, gs, &y[i]);
}

void quantize_row_iq3_xxs(const float *x, void *y, int64_t k) { quantize_row_iq3_xxs_imatrix(x, y, k, NULL); }
void quantize_row_iq3_s(const float *x, void *y, int64_t k) { quantize_row_iq3_s_imatrix(x, y, k, NULL); }

/* ---------------------------------------------------------------------------------------------- dequantizers */

/* the 8 sign bits of a 7-bit group (the eighth is the parity) */
static inline unsigned even_signs(uint32_t group7) { return group7 | ((unsigned)__builtin_parity(group7) << 7); }

/* 8 values: two grid entries, signs applied (bit j of signs negates element j), times db */
static inline void grid_pair(float *y, float db, uint32_t g1, uint32_t g2, unsigned signs) {
    for (int j = 0; j < 4; ++j) {
        y[j] = db * (float)(uint8_t)(g1 >> 8 * j) * (signs >> j & 1 ? -1.f : 1.f);
        y[j + 4] = db * (float)(uint8_t)(g2 >> 8 * j) * (signs >> (j + 4) & 1 ? -1.f : 1.f);
    }
}

static inline uint32_t xxs_word(const block_iq3_xxs *x, int ib) {
    uint32_t w;
    memcpy(&w, x->qs + QK_K / 4 + 4 * ib, 4);
    return w;
}

/* grid index of element group 2l + h (h = 0, 1) of sub-block ib of an IQ3_S block: 8 low bits + bit from qh */
static inline int s_index(const block_iq3_s *x, int ib, int j) { return x->qs[8 * ib + j] | ((x->qh[ib] >> j & 1) << 8); }

void dequantize_row_iq3_xxs(const void *vx, float *y, int64_t k) {
    const block_iq3_xxs *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const uint32_t w = xxs_word(&x[i], ib);
            const float db = d * (0.5f + (w >> 28)) * 0.5f;
            const uint8_t *qs = x[i].qs + 8 * ib;
            for (int l = 0; l < 4; ++l, y += 8)
                grid_pair(y, db, tk_iq3xxs_grid[qs[2 * l]], tk_iq3xxs_grid[qs[2 * l + 1]], even_signs(w >> 7 * l & 127));
        }
    }
}

void dequantize_row_iq3_s(const void *vx, float *y, int64_t k) {
    const block_iq3_s *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float db = d * (1 + 2 * ((x[i].scales[ib / 2] >> 4 * (ib % 2)) & 0xF));
            for (int l = 0; l < 4; ++l, y += 8)
                grid_pair(y, db, tk_iq3s_grid[s_index(&x[i], ib, 2 * l)], tk_iq3s_grid[s_index(&x[i], ib, 2 * l + 1)],
                          x[i].signs[4 * ib + l]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- dot products */
/* In the float order of ggml's AVX2 kernels (quants_iq3_avx2.c), so that the scalar and SIMD paths give the same bits
   (and ggml's AVX2 build's): per super-block, 8 exact integer lanes, lane l holding Σ over the sub-blocks of
   (2·scale + 1) · Σ value·q8 over elements 4l..4l+3 of each; one fused multiply-add of d per lane; the lanes summed
   in ggml's horizontal order at the end. */

/* lane[l] += ls · Σ value·q8 over elements 4l..4l+3 of 32: four grid entries (8 values each) with their signs */
static inline void lanes_add(int32_t lane[8], const uint32_t g[8], const unsigned signs[4], const int8_t *q8, int ls) {
    for (int e = 0; e < 32; ++e) {
        const int v = (uint8_t)(g[e / 4] >> 8 * (e % 4));
        const int q = signs[e / 8] >> (e % 8) & 1 ? -q8[e] : q8[e];
        lane[e / 4] += ls * (v * q);
    }
}

TK_Q8_K_SUPER_DOT(tk_vec_dot_iq3_xxs_q8_K, block_iq3_xxs, 0.25f,
    const uint32_t w = xxs_word(&x[i], ib);
    uint32_t g[8];
    unsigned signs[4];
    for (int k = 0; k < 8; ++k) g[k] = tk_iq3xxs_grid[x[i].qs[8 * ib + k]];
    for (int l = 0; l < 4; ++l) signs[l] = even_signs(w >> 7 * l & 127);
    lanes_add(lane, g, signs, q8, (int)(2 * (w >> 28) + 1));)

TK_Q8_K_SUPER_DOT(tk_vec_dot_iq3_s_q8_K, block_iq3_s, 1.0f,
    uint32_t g[8];
    unsigned signs[4];
    for (int k = 0; k < 8; ++k) g[k] = tk_iq3s_grid[s_index(&x[i], ib, k)];
    for (int l = 0; l < 4; ++l) signs[l] = x[i].signs[4 * ib + l];
    lanes_add(lane, g, signs, q8, 2 * ((x[i].scales[ib / 2] >> 4 * (ib % 2)) & 0xF) + 1);)
