/* The type-traits table (one row per ggml type the core handles) and the threaded whole-matrix drivers built on it. */
#include <stddef.h>
#include "quants.h"

static void quantize_row_f32(const float *x, void *y, int64_t k) { tk_convert(x, TK_F32, y, TK_F32, (size_t)k, 1); }
static void quantize_row_f16(const float *x, void *y, int64_t k) { tk_convert(x, TK_F32, y, TK_F16, (size_t)k, 1); }
static void quantize_row_bf16(const float *x, void *y, int64_t k) { tk_convert(x, TK_F32, y, TK_BF16, (size_t)k, 1); }
static void dequantize_row_f32(const void *x, float *y, int64_t k) { tk_convert(x, TK_F32, y, TK_F32, (size_t)k, 1); }
static void dequantize_row_f16(const void *x, float *y, int64_t k) { tk_convert(x, TK_F16, y, TK_F32, (size_t)k, 1); }
static void dequantize_row_bf16(const void *x, float *y, int64_t k) { tk_convert(x, TK_BF16, y, TK_F32, (size_t)k, 1); }

#define ROW(id, nm, bs, sz, q, dq) [id] = {nm, bs, sz, q, dq}

static const struct tk_type_traits TRAITS[TK_TYPE_COUNT] = {
    ROW(TK_F32, "f32", 1, 4, quantize_row_f32, dequantize_row_f32),
    ROW(TK_F16, "f16", 1, 2, quantize_row_f16, dequantize_row_f16),
    ROW(TK_BF16, "bf16", 1, 2, quantize_row_bf16, dequantize_row_bf16),
    ROW(TK_Q4_0, "q4_0", QK, sizeof(block_q4_0), quantize_row_q4_0_ref, dequantize_row_q4_0),
    ROW(TK_Q4_1, "q4_1", QK, sizeof(block_q4_1), quantize_row_q4_1_ref, dequantize_row_q4_1),
    ROW(TK_Q5_0, "q5_0", QK, sizeof(block_q5_0), quantize_row_q5_0_ref, dequantize_row_q5_0),
    ROW(TK_Q5_1, "q5_1", QK, sizeof(block_q5_1), quantize_row_q5_1_ref, dequantize_row_q5_1),
    ROW(TK_Q8_0, "q8_0", QK, sizeof(block_q8_0), quantize_row_q8_0_ref, dequantize_row_q8_0),
    ROW(TK_Q8_1, "q8_1", QK, sizeof(block_q8_1), quantize_row_q8_1_ref, dequantize_row_q8_1),
    ROW(TK_Q2_K, "q2_K", QK_K, sizeof(block_q2_K), quantize_row_q2_K_ref, dequantize_row_q2_K),
    ROW(TK_Q3_K, "q3_K", QK_K, sizeof(block_q3_K), quantize_row_q3_K_ref, dequantize_row_q3_K),
    ROW(TK_Q4_K, "q4_K", QK_K, sizeof(block_q4_K), quantize_row_q4_K_ref, dequantize_row_q4_K),
    ROW(TK_Q5_K, "q5_K", QK_K, sizeof(block_q5_K), quantize_row_q5_K_ref, dequantize_row_q5_K),
    ROW(TK_Q6_K, "q6_K", QK_K, sizeof(block_q6_K), quantize_row_q6_K_ref, dequantize_row_q6_K),
    ROW(TK_Q8_K, "q8_K", QK_K, sizeof(block_q8_K), quantize_row_q8_K_ref, dequantize_row_q8_K),
};

const struct tk_type_traits *tk_traits(int type) {
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
    void *dst;
    int64_t nrows, n_per_row;
    int quantize;
};

static void rows_run(void *p, int i, int n) {
    struct rows_job *job = p;
    int64_t per = (job->nrows + n - 1) / n, a = per * i, b = a + per;
    if (b > job->nrows) b = job->nrows;
    size_t qrow = tk_row_size((int)(job->t - TRAITS), job->n_per_row);
    size_t frow = (size_t)job->n_per_row * sizeof(float);
    for (int64_t r = a; r < b; r++) {
        if (job->quantize)
            job->t->quantize_row((const float *)((const char *)job->src + r * frow), (char *)job->dst + r * qrow,
                                 job->n_per_row);
        else
            job->t->dequantize_row((const char *)job->src + r * qrow, (float *)((char *)job->dst + r * frow),
                                   job->n_per_row);
    }
}

static int run_rows(int type, const void *src, void *dst, int64_t nrows, int64_t n_per_row, int nthreads, int q) {
    const struct tk_type_traits *t = tk_traits(type);
    if (!t || n_per_row <= 0 || nrows < 0 || n_per_row % t->block_size) return -1;
    struct rows_job job = {t, src, dst, nrows, n_per_row, q};
    if (nthreads < 1) nthreads = 1;
    if (nthreads > nrows) nthreads = nrows > 0 ? (int)nrows : 1;
    tk_parallel(rows_run, &job, nthreads);
    return 0;
}

int tk_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, int nthreads) {
    return run_rows(type, src, dst, nrows, n_per_row, nthreads, 1);
}

int tk_dequantize_rows(int type, const void *src, float *dst, int64_t nrows, int64_t n_per_row, int nthreads) {
    return run_rows(type, src, dst, nrows, n_per_row, nthreads, 0);
}
