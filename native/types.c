/* The type-traits table (one row per ggml type the core handles) and the threaded whole-matrix drivers built on it. */
#include <stddef.h>
#include <stdlib.h>
#include "quants.h"
#include "quants_iq2.h"
#include "quants_iq1.h"
#include "quants_iq3.h"

static void quantize_row_f32(const float *x, void *y, int64_t k) { tk_convert(x, TK_F32, y, TK_F32, (size_t)k, 1); }
static void quantize_row_f16(const float *x, void *y, int64_t k) { tk_convert(x, TK_F32, y, TK_F16, (size_t)k, 1); }
static void quantize_row_bf16(const float *x, void *y, int64_t k) { tk_convert(x, TK_F32, y, TK_BF16, (size_t)k, 1); }
static void dequantize_row_f32(const void *x, float *y, int64_t k) { tk_convert(x, TK_F32, y, TK_F32, (size_t)k, 1); }
static void dequantize_row_f16(const void *x, float *y, int64_t k) { tk_convert(x, TK_F16, y, TK_F32, (size_t)k, 1); }
static void dequantize_row_bf16(const void *x, float *y, int64_t k) { tk_convert(x, TK_BF16, y, TK_F32, (size_t)k, 1); }

#define ROW(id, nm, bs, sz, q, dq, qs) [id] = {nm, bs, sz, q, dq, qs}
/* the SIMD legacy quantizers, Q8_K's (the k-quants' activations) and the k-quants': NEON on ARM64
   (quants_legacy_neon.c, quants_k_neon.c), AVX2 elsewhere (quants_legacy_avx2.c, quants_k_avx2.c; the reference off
   x86) */
#if defined(__aarch64__)
#define LEGACY_SIMD(t) quantize_row_##t##_neon
#define Q8_K_SIMD quantize_row_q8_K_neon
#define K_SIMD(t) quantize_row_##t##_neon
#else
#define LEGACY_SIMD(t) quantize_row_##t##_avx2
#define Q8_K_SIMD quantize_row_q8_K_avx2
#define K_SIMD(t) quantize_row_##t##_avx2
#endif

static const struct tk_type_traits TRAITS[TK_TYPE_COUNT] = {
    ROW(TK_F32, "f32", 1, 4, quantize_row_f32, dequantize_row_f32, NULL),
    ROW(TK_F16, "f16", 1, 2, quantize_row_f16, dequantize_row_f16, NULL),
    ROW(TK_BF16, "bf16", 1, 2, quantize_row_bf16, dequantize_row_bf16, NULL),
    ROW(TK_Q4_0, "q4_0", QK, sizeof(block_q4_0), quantize_row_q4_0_ref, dequantize_row_q4_0, LEGACY_SIMD(q4_0)),
    ROW(TK_Q4_1, "q4_1", QK, sizeof(block_q4_1), quantize_row_q4_1_ref, dequantize_row_q4_1, LEGACY_SIMD(q4_1)),
    ROW(TK_Q5_0, "q5_0", QK, sizeof(block_q5_0), quantize_row_q5_0_ref, dequantize_row_q5_0, LEGACY_SIMD(q5_0)),
    ROW(TK_Q5_1, "q5_1", QK, sizeof(block_q5_1), quantize_row_q5_1_ref, dequantize_row_q5_1, LEGACY_SIMD(q5_1)),
    ROW(TK_Q8_0, "q8_0", QK, sizeof(block_q8_0), quantize_row_q8_0_ref, dequantize_row_q8_0, LEGACY_SIMD(q8_0)),
    ROW(TK_Q8_1, "q8_1", QK, sizeof(block_q8_1), quantize_row_q8_1_ref, dequantize_row_q8_1, NULL),
    ROW(TK_Q2_K, "q2_K", QK_K, sizeof(block_q2_K), quantize_row_q2_K_ref, dequantize_row_q2_K, K_SIMD(q2_K)),
    ROW(TK_Q3_K, "q3_K", QK_K, sizeof(block_q3_K), quantize_row_q3_K_ref, dequantize_row_q3_K, K_SIMD(q3_K)),
    ROW(TK_Q4_K, "q4_K", QK_K, sizeof(block_q4_K), quantize_row_q4_K_ref, dequantize_row_q4_K, K_SIMD(q4_K)),
    ROW(TK_Q5_K, "q5_K", QK_K, sizeof(block_q5_K), quantize_row_q5_K_ref, dequantize_row_q5_K, K_SIMD(q5_K)),
    ROW(TK_Q6_K, "q6_K", QK_K, sizeof(block_q6_K), quantize_row_q6_K_ref, dequantize_row_q6_K, K_SIMD(q6_K)),
    ROW(TK_Q8_K, "q8_K", QK_K, sizeof(block_q8_K), quantize_row_q8_K_ref, dequantize_row_q8_K, Q8_K_SIMD),
    ROW(TK_IQ3_XXS, "iq3_xxs", QK_K, sizeof(block_iq3_xxs), quantize_row_iq3_xxs, dequantize_row_iq3_xxs, NULL),
    ROW(TK_IQ3_S, "iq3_s", QK_K, sizeof(block_iq3_s), quantize_row_iq3_s, dequantize_row_iq3_s, NULL),
    ROW(TK_IQ1_S, "iq1_s", QK_K, sizeof(block_iq1_s), NULL, dequantize_row_iq1_s, NULL), /* needs weights */
    ROW(TK_IQ1_M, "iq1_m", QK_K, sizeof(block_iq1_m), quantize_row_iq1_m, dequantize_row_iq1_m, NULL),
    ROW(TK_IQ2_XXS, "iq2_xxs", QK_K, sizeof(block_iq2_xxs), NULL, dequantize_row_iq2_xxs, NULL),
    ROW(TK_IQ2_XS, "iq2_xs", QK_K, sizeof(block_iq2_xs), NULL, dequantize_row_iq2_xs, NULL),
    ROW(TK_IQ2_S, "iq2_s", QK_K, sizeof(block_iq2_s), quantize_row_iq2_s, dequantize_row_iq2_s, NULL),
    ROW(TK_IQ4_NL, "iq4_nl", QK, sizeof(block_iq4_nl), quantize_row_iq4_nl, dequantize_row_iq4_nl, NULL),
    ROW(TK_IQ4_XS, "iq4_xs", QK_K, sizeof(block_iq4_xs), quantize_row_iq4_xs, dequantize_row_iq4_xs, NULL),
    ROW(TK_TQ1_0, "tq1_0", QK_K, sizeof(block_tq1_0), quantize_row_tq1_0, dequantize_row_tq1_0, NULL),
    ROW(TK_TQ2_0, "tq2_0", QK_K, sizeof(block_tq2_0), quantize_row_tq2_0, dequantize_row_tq2_0, NULL),
};

/* not in the table: no file holds it */
static const struct tk_type_traits Q8_KX_TRAITS = {"q8_KX", QK_K, sizeof(block_q8_KX), tk_quantize_row_q8_KX,
                                                   tk_dequantize_row_q8_KX, NULL};

static const struct tk_type_traits Q8_KP_TRAITS = {"q8_KP", QK_K, sizeof(block_q8_KX), tk_quantize_row_q8_KP,
                                                   tk_dequantize_row_q8_KP, NULL};

static const struct tk_type_traits Q8_K16_TRAITS = {"q8_K16", QK_K, sizeof(block_q8_K16), tk_quantize_row_q8_K16,
                                                    tk_dequantize_row_q8_K16, NULL};

static const struct tk_type_traits F16X_TRAITS = {"f16x", 1, sizeof(float), tk_quantize_row_f16x, tk_dequantize_row_f16x,
                                                  NULL};

static const struct tk_type_traits Q8_0S_TRAITS = {"q8_0s", QK, sizeof(block_q8_0s), tk_quantize_row_q8_0s,
                                                   tk_dequantize_row_q8_0s, NULL};

const struct tk_type_traits *tk_traits(int type) {
    if (type == TK_F16X) return &F16X_TRAITS;
    if (type == TK_Q8_0S) return &Q8_0S_TRAITS;
    if (type == TK_Q8_KX) return &Q8_KX_TRAITS;
    if (type == TK_Q8_KP) return &Q8_KP_TRAITS;
    if (type == TK_Q8_K16) return &Q8_K16_TRAITS;
    if (type < 0 || type >= TK_TYPE_COUNT || TRAITS[type].name == NULL) return NULL;
    return &TRAITS[type];
}

size_t tk_row_size(int type, int64_t n) {
    const struct tk_type_traits *t = tk_traits(type);
    return t ? (size_t)(n / t->block_size) * t->type_size : 0;
}

struct rows_job {
    const struct tk_type_traits *t;
    const void *src;
    int src_type;           /* quantize: element type of src (F32, F16, BF16) */
    const float *imatrix;   /* quantize: per-column importance weights, or NULL */
    void *dst;
    int64_t nrows, n_per_row;
    int quantize;
    int64_t nonfinite[256]; /* quantize: NaN/Inf count per thread (rows of such a thread are not quantized) */
    int failed[256];        /* allocation failure per thread */
};

static size_t elem_size(int t) { return t == TK_F32 ? 4 : 2; }

static void rows_run(void *p, int i, int n) {
    struct rows_job *job = p;
    int64_t per = (job->nrows + n - 1) / n, a = per * i, b = a + per;
    if (b > job->nrows) b = job->nrows;
    if (a >= b) return;
    size_t qrow = tk_row_size((int)(job->t - TRAITS), job->n_per_row);
    size_t frow = (size_t)job->n_per_row * sizeof(float);
    if (!job->quantize) {
        for (int64_t r = a; r < b; r++)
            job->t->dequantize_row((const char *)job->src + r * qrow, (float *)((char *)job->dst + r * frow),
                                   job->n_per_row);
        return;
    }
    /* each row is widened to f32 in a small per-thread buffer that stays in cache, checked, then quantized */
    size_t srow = (size_t)job->n_per_row * elem_size(job->src_type);
    float *buf = job->src_type == TK_F32 ? NULL : malloc(frow);
    if (job->src_type != TK_F32 && !buf) { job->failed[i] = 1; return; }
    tk_quantize_row_fn quantize_row =
        job->t->quantize_row_simd && tk_use_simd() ? job->t->quantize_row_simd : job->t->quantize_row;
    tk_quantize_row_imatrix_fn quantize_row_w =
        job->imatrix ? tk_quantize_row_imatrix((int)(job->t - TRAITS)) : NULL;
    int64_t bad = 0;
    for (int64_t r = a; r < b; r++) {
        const void *src = (const char *)job->src + r * srow;
        bad += tk_count_nonfinite(src, (enum tk_type)job->src_type, (size_t)job->n_per_row);
        if (bad) break;
        const float *x = src;
        if (buf) {
            tk_convert(src, (enum tk_type)job->src_type, buf, TK_F32, (size_t)job->n_per_row, 1);
            x = buf;
        }
        if (quantize_row_w) quantize_row_w(x, (char *)job->dst + r * qrow, job->n_per_row, job->imatrix);
        else quantize_row(x, (char *)job->dst + r * qrow, job->n_per_row);
    }
    job->nonfinite[i] = bad;
    free(buf);
}

static int run_rows(struct rows_job *job, int nthreads) {
    const struct tk_type_traits *t = job->t;
    if (!t || job->n_per_row <= 0 || job->nrows < 0 || job->n_per_row % t->block_size) return -1;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    if (nthreads > job->nrows) nthreads = job->nrows > 0 ? (int)job->nrows : 1;
    tk_parallel(rows_run, job, nthreads);
    for (int i = 0; i < nthreads; i++)
        if (job->failed[i]) return -3;
    return 0;
}

int tk_quantize_rows_imatrix(int type, const void *src, int src_type, void *dst, int64_t nrows, int64_t n_per_row,
                             int nthreads, const float *qw, int64_t *nonfinite) {
    if (src_type != TK_F32 && src_type != TK_F16 && src_type != TK_BF16) return -1;
    if (!qw && tk_traits(type) && !tk_traits(type)->quantize_row) return -4; /* IQ1_S: ggml's needs the weights */
    struct rows_job job = {.t = tk_traits(type), .src = src, .src_type = src_type, .imatrix = qw, .dst = dst,
                           .nrows = nrows, .n_per_row = n_per_row, .quantize = 1};
    int rc = run_rows(&job, nthreads);
    int64_t bad = 0;
    for (int i = 0; i < 256; i++) bad += job.nonfinite[i];
    if (nonfinite) *nonfinite = bad;
    return rc ? rc : bad ? -2 : 0;
}

int tk_quantize_rows_from(int type, const void *src, int src_type, void *dst, int64_t nrows, int64_t n_per_row,
                          int nthreads, int64_t *nonfinite) {
    return tk_quantize_rows_imatrix(type, src, src_type, dst, nrows, n_per_row, nthreads, NULL, nonfinite);
}

int tk_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, int nthreads) {
    return tk_quantize_rows_from(type, src, TK_F32, dst, nrows, n_per_row, nthreads, NULL);
}

int tk_dequantize_rows(int type, const void *src, float *dst, int64_t nrows, int64_t n_per_row, int nthreads) {
    struct rows_job job = {.t = tk_traits(type), .src = src, .dst = dst, .nrows = nrows, .n_per_row = n_per_row};
    return run_rows(&job, nthreads);
}
