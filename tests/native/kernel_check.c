/* kernel_check: the native core's SIMD kernels against its scalar reference, without Python, on any architecture.

   Built from the C files of native/ (all but module.c) by `make test-kernels` (this machine) and `make test-arm64` (cross-compiled
   for ARM64, run under qemu-aarch64 on CPU models with and without dotprod/i8mm). For every instruction-set level the
   CPU offers (x86: AVX2, AVX-VNNI, AVX512-VNNI; ARM64: NEON, dotprod, i8mm — capped with tk_set_isa_limit), on fixed
   and seeded random inputs:

   * vec_dot: the SIMD kernel of every weight type against the scalar one on the same bytes (random quants with sane
     scales, quantized random rows, all-zero/all-one/alternating bit patterns; activations at ±127 and -128);
   * two-row kernels (where the type has one): each result bit for bit the one-row kernel's;
   * tk_matmul: SIMD against scalar, every token alone against the batch (tiles), 1 against 3 threads (both bit for
     bit);
   * tk_convert: every F16 and BF16 value to F32 and across, and F32 edge/random bit patterns to F16/BF16, against the
     scalar functions, bit for bit (NaN payloads included);
   * the quantizers of every type `quantize` writes, SIMD against reference, byte for byte, on random and adversarial
     rows.

   "Bit for bit" where the promise is (ARM64: every quantized type's vec_dot equals the scalar one; x86: the types
   whose scalar kernel follows the AVX2 order — see EXACT_X86); otherwise |simd - scalar| <= RTOL · ‖w‖ · ‖x‖ (the
   tests' SIMD_RTOL, tests/test_matmul.py). Exit status 1 on any failure; one line per check on stdout. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "levels.h"
#include "quants_iq1.h"
#include "quants_iq3.h"
#include "quants_iq2.h"

#define RTOL 1e-5

static const int DOT_TYPES[] = {TK_F32, TK_F16, TK_BF16, TK_Q4_0, TK_Q4_1, TK_Q5_0, TK_Q5_1, TK_Q8_0,
                                TK_Q2_K, TK_Q3_K, TK_Q4_K, TK_Q5_K, TK_Q6_K, TK_IQ4_NL, TK_IQ4_XS, TK_TQ1_0,
                                TK_TQ2_0, TK_IQ1_S, TK_IQ1_M, TK_IQ3_XXS, TK_IQ3_S, TK_IQ2_XXS,
                                TK_IQ2_XS, TK_IQ2_S};
static const int QUANT_TYPES[] = {TK_Q4_0, TK_Q4_1, TK_Q5_0, TK_Q5_1, TK_Q8_0, TK_Q2_K,
                                  TK_Q3_K, TK_Q4_K, TK_Q5_K, TK_Q6_K, TK_Q8_K};
#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

static int failures, checks;

static void report(int ok, const char *what, const char *type, const char *level, const char *detail) {
    checks++;
    if (!ok) failures++;
    printf("%s %-9s %-5s %-10s %s\n", ok ? "ok  " : "FAIL", what, type, level, detail);
}

/* ---------------------------------------------------------------------------------------------- inputs */

static uint64_t rng_state;
static void seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t next(void) {  /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform(void) { return (double)(next() >> 11) * (1.0 / 9007199254740992.0); }
static float gauss(void) {
    const double u = uniform() + 1e-300, v = uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* rows of cols floats: Gaussian, each row with its own scale (1e-3 .. 1e2) */
static void random_floats(float *x, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        const float sc = (float)pow(10.0, -3.0 + 5.0 * uniform());
        for (int64_t i = 0; i < cols; i++) x[r * cols + i] = sc * gauss();
    }
}

/* the fp16 scale fields of each block (sane values: random fp16 in ±[2^-14, 2)) */
static void sane_scales(int t, uint8_t *row, int64_t cols) {
    const struct tk_type_traits *tr = tk_traits(t);
    size_t off[2];
    int nf = 0;
    switch (t) {
    case TK_Q4_0: case TK_Q5_0: case TK_Q8_0: off[nf++] = 0; break;
    case TK_Q4_1: case TK_Q5_1: case TK_Q4_K: case TK_Q5_K: off[nf++] = 0; off[nf++] = 2; break;
    case TK_Q2_K: off[nf++] = offsetof(block_q2_K, d); off[nf++] = offsetof(block_q2_K, dmin); break;
    case TK_Q3_K: off[nf++] = offsetof(block_q3_K, d); break;
    case TK_Q6_K: off[nf++] = offsetof(block_q6_K, d); break;
    case TK_IQ4_NL: case TK_IQ4_XS: case TK_IQ3_XXS: case TK_IQ3_S: off[nf++] = 0; break;
    case TK_IQ2_XXS: case TK_IQ2_XS: case TK_IQ2_S: off[nf++] = 0; break;
    case TK_TQ1_0: off[nf++] = offsetof(block_tq1_0, d); break;
    case TK_TQ2_0: off[nf++] = offsetof(block_tq2_0, d); break;
    case TK_IQ1_S: off[nf++] = offsetof(block_iq1_s, d); break;
    case TK_IQ1_M: /* the fp16 scale is the top nibbles of the four 16-bit scale words */
        for (int64_t b = 0; b < cols / QK_K; b++) {
            const uint16_t h = tk_fp32_to_fp16((float)((uniform() * 2 - 1) * pow(2.0, -14.0 * uniform())));
            uint16_t sc[4];
            uint8_t *p = row + (size_t)b * sizeof(block_iq1_m) + offsetof(block_iq1_m, scales);
            memcpy(sc, p, sizeof(sc));
            for (int k = 0; k < 4; k++) sc[k] = (uint16_t)((sc[k] & 0x0FFF) | (((h >> 4 * k) & 0xF) << 12));
            memcpy(p, sc, sizeof(sc));
        }
        return;
    default: return;
    }
    for (int64_t b = 0; b < cols / tr->block_size; b++)
        for (int k = 0; k < nf; k++) {
            const uint16_t h = tk_fp32_to_fp16((float)((uniform() * 2 - 1) * pow(2.0, -14.0 * uniform())));
            memcpy(row + (size_t)b * tr->type_size + off[k], &h, 2);
        }
}

/* weight rows of type t: kind 0 quantized from random floats, 1 random bytes with sane scales, 2..4 the byte patterns
   0x00, 0xFF, 0x55/0xAA (scales sane) */
static void make_weights(int t, void *w, int64_t rows, int64_t cols, int kind) {
    const size_t rb = tk_row_size(t, cols);
    if (kind == 0 || t == TK_F32 || t == TK_F16 || t == TK_BF16) {
        float *x = malloc(sizeof(float) * (size_t)(rows * cols));
        random_floats(x, rows, cols);
        if (kind >= 2)  /* float types: ones, alternating signs, a ramp */
            for (int64_t i = 0; i < rows * cols; i++)
                x[i] = kind == 2 ? 1.0f : kind == 3 ? (i & 1 ? -1.0f : 1.0f) : (float)(i % 97) / 8.0f;
        /* a type that quantizes only with importance weights (IQ1_S) gets weights of 1 */
        float *qw = NULL;
        if (!tk_traits(t)->quantize_row) {
            qw = malloc(sizeof(float) * (size_t)cols);
            for (int64_t i = 0; i < cols; i++) qw[i] = 1.0f;
        }
        tk_set_force_scalar(1);
        if (tk_quantize_rows_imatrix(t, x, TK_F32, w, rows, cols, 1, qw, NULL)) {
            fprintf(stderr, "quantize %d failed\n", t);
            exit(2);
        }
        free(qw);
        tk_set_force_scalar(0);
        free(x);
        return;
    }
    uint8_t *p = w;
    for (size_t i = 0; i < rb * (size_t)rows; i++)
        p[i] = kind == 1 ? (uint8_t)next() : kind == 2 ? 0x00 : kind == 3 ? 0xFF : (i & 1 ? 0xAA : 0x55);
    for (int64_t r = 0; r < rows; r++) sane_scales(t, p + (size_t)r * rb, cols);
}

/* activation rows: kind 0 random, 1 all equal (quants 127), 2 alternating ±1 (±127), 3 one negative maximum per
   block of 32 among small values (Q8_K: -128) */
static void make_activations(float *x, int64_t n, int64_t cols, int kind) {
    random_floats(x, n, cols);
    if (kind == 0) return;
    for (int64_t i = 0; i < n * cols; i++)
        x[i] = kind == 1 ? 0.5f : kind == 2 ? (i & 1 ? -0.5f : 0.5f) : (i % 32 == 5 ? -3.0f : x[i] * 1e-3f);
}

static double norm_of(int t, const void *row, int64_t cols) {
    float *f = malloc(sizeof(float) * (size_t)cols);
    tk_traits(t)->dequantize_row(row, f, cols);
    double s = 0;
    for (int64_t i = 0; i < cols; i++) s += (double)f[i] * f[i];
    free(f);
    return sqrt(s);
}

static int is_float(int t) { return t == TK_F32 || t == TK_F16 || t == TK_BF16; }

/* where SIMD and scalar vec_dots are promised to agree bit for bit */
static int exact_type(int t) {
    if (is_float(t)) return 0;
#if defined(__aarch64__)
    return 1;
#else
    /* x86: the scalar kernels that follow the AVX2 kernels' order (dot.c) */
    return t == TK_Q4_0 || t == TK_Q4_1 || t == TK_Q5_0 || t == TK_Q5_1 || t == TK_Q8_0 || t == TK_Q2_K ||
           t == TK_Q5_K || t == TK_IQ3_XXS || t == TK_IQ3_S || t == TK_IQ2_XXS || t == TK_IQ2_XS ||
           t == TK_IQ2_S;
#endif
}

/* x86's F16C (vcvtph2ps) quiets a signalling NaN read from F16, so there a NaN is only checked to stay a NaN (as
   tests/test_native_convert.py does); ARM64's path keeps the scalar code's payload bits */
#if defined(__aarch64__)
#define F16C_QUIETS_NAN 0
#else
#define F16C_QUIETS_NAN 1
#endif

/* every type of QUANT_TYPES has a SIMD quantizer: AVX2 on x86, NEON on ARM64 */
static int has_simd_quantizer(int t) { return tk_traits(t)->quantize_row_simd != NULL; }

static int same_float(float a, float b) { return memcmp(&a, &b, 4) == 0 || (isnan(a) && isnan(b)); }

/* ---------------------------------------------------------------------------------------------- checks */

static void check_vec_dot(int t, int level) {
    const struct tk_dot_traits *d = tk_dot_traits(t);
    const tk_vec_dot_fn scalar = d->vec_dot, simd = tk_vec_dot(t);
    const tk_vec_dot2_fn two = tk_vec_dot2(t);
    const char *name = tk_traits(t)->name, *lv = LEVEL_NAMES[level];
    char msg[256];
    if (simd == scalar) {
        report(1, "vec_dot", name, lv, "no SIMD kernel at this level (scalar)");
        return;
    }
    const int at = d->vec_dot_type, exact = exact_type(t);
    static const int64_t COLS[] = {256, 512, 2048, 768 + 32};  /* 800: odd block count for the legacy types */
    int64_t compared = 0, bad = 0, bad2 = 0;
    double worst = 0;
    for (int ci = 0; ci < COUNT(COLS); ci++) {
        int64_t cols = COLS[ci];
        if (cols % tk_traits(t)->block_size || cols % tk_traits(at)->block_size) continue;
        if (is_float(t)) cols += 7;  /* a tail past the vector loop */
        const int64_t rows = 16;
        const size_t wb = tk_row_size(t, cols), ab = tk_row_size(at, cols);
        uint8_t *w = malloc(wb * rows), *a = malloc(ab * 4);
        float *x = malloc(sizeof(float) * (size_t)(4 * cols));
        for (int wk = 0; wk < 5; wk++) {
            make_weights(t, w, rows, cols, wk);
            for (int ak = 0; ak < 4; ak++) {
                make_activations(x, 4, cols, ak);
                tk_set_force_scalar(1);
                tk_convert_activations(t, x, 4, cols, a);
                tk_set_force_scalar(0);
                for (int64_t r = 0; r < rows; r++)
                    for (int j = 0; j < 4; j++) {
                        float s0, s1, s2[2];
                        scalar(cols, &s0, w + r * wb, a + j * ab);
                        simd(cols, &s1, w + r * wb, a + j * ab);
                        compared++;
                        if (exact) {
                            if (!same_float(s0, s1)) {
                                if (bad++ < 3)
                                    fprintf(stderr, "  %s %s cols %lld w%d a%d row %lld tok %d: scalar %.9g simd %.9g\n",
                                            name, lv, (long long)cols, wk, ak, (long long)r, j, s0, s1);
                            }
                        } else {
                            const double sc = norm_of(t, w + r * wb, cols) * norm_of(at, a + j * ab, cols);
                            const double e = sc > 0 ? fabs((double)s1 - s0) / sc : fabs((double)s1 - s0);
                            if (e > worst) worst = e;
                            if (!(e <= RTOL)) bad++;
                        }
                        if (two && r + 1 < rows) {
                            float t1;
                            two(cols, s2, w + r * wb, wb, a + j * ab);
                            simd(cols, &t1, w + (r + 1) * wb, a + j * ab);
                            if (!same_float(s2[0], s1) || !same_float(s2[1], t1)) bad2++;
                        }
                    }
            }
        }
        free(w), free(a), free(x);
    }
    if (exact) snprintf(msg, sizeof msg, "%lld dots, %lld differ from scalar (bit for bit)", (long long)compared,
                        (long long)bad);
    else snprintf(msg, sizeof msg, "%lld dots, max |simd-scalar|/(|w||x|) %.2g <= %.0e: %lld over", (long long)compared,
                  worst, RTOL, (long long)bad);
#if defined(__aarch64__)
    /* a level without its own kernel for the type runs the level below's: say so */
    if (level > 1 && tk_vec_dot_neon(t, level) == tk_vec_dot_neon(t, level - 1))
        strncat(msg, level == 3 ? " [no i8mm kernel: the level below's]" : " [no dotprod kernel: NEON's]",
                sizeof msg - strlen(msg) - 1);
#endif
    report(bad == 0, "vec_dot", name, lv, msg);
    if (two) {
        snprintf(msg, sizeof msg, "%lld pairs, %lld differ from two vec_dots", (long long)compared, (long long)bad2);
        report(bad2 == 0, "vec_dot2", name, lv, msg);
    }
}

static void check_matmul(int t, int level) {
    const char *name = tk_traits(t)->name, *lv = LEVEL_NAMES[level];
    /* 32-element types get a shape of 19 blocks too: kernels that take four blocks at a time end on a tail of 3 */
    const int64_t tail = tk_traits(t)->block_size == QK ? 3 * QK : 0;
    /* 6 tokens: fewer than most tiles take, more than their narrow variants (gemm_for picks the narrow one); 3: the
       narrow variants of 2 tokens (F16's and BF16's), their token tiles repeated; float rows get a tail past the
       8-element steps */
    const int64_t shapes[][3] = {{37, 2 * QK_K + tail, 11}, {8, QK_K, 4}, {130, 2048, 9}, {5, 4 * QK_K, 1},
                                 {21, QK_K, 6}, {11, QK_K, 3}};
    int64_t bad_ref = 0, bad_batch = 0, bad_threads = 0, outputs = 0;
    double worst = 0;
    for (int si = 0; si < COUNT(shapes); si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1] + (is_float(t) ? 7 : 0), n = shapes[si][2];
        const size_t wb = tk_row_size(t, cols);
        uint8_t *w = malloc(wb * (size_t)rows);
        float *x = malloc(sizeof(float) * (size_t)(n * cols)), *ys = malloc(sizeof(float) * (size_t)(n * rows)),
              *yv = malloc(sizeof(float) * (size_t)(n * rows)), *y1 = malloc(sizeof(float) * (size_t)rows),
              *y3 = malloc(sizeof(float) * (size_t)(n * rows));
        make_weights(t, w, rows, cols, si % 2);
        make_activations(x, n, cols, 0);
        tk_set_force_scalar(1);
        tk_matmul(t, w, rows, cols, x, n, ys, 1);
        tk_set_force_scalar(0);
        tk_matmul(t, w, rows, cols, x, n, yv, 1);
        tk_matmul(t, w, rows, cols, x, n, y3, 3);
        /* norms of the activations as the kernels see them (converted to the vec_dot type) */
        const int at = tk_dot_traits(t)->vec_dot_type;
        const size_t ab = tk_row_size(at, cols);
        uint8_t *a = malloc(ab * (size_t)n);
        tk_convert_activations(t, x, n, cols, a);
        for (int64_t j = 0; j < n; j++) {
            tk_matmul(t, w, rows, cols, x + j * cols, 1, y1, 1);
            const double xn = norm_of(at, a + j * ab, cols);
            for (int64_t r = 0; r < rows; r++) {
                const float s0 = ys[j * rows + r], s1 = yv[j * rows + r];
                outputs++;
                if (!same_float(y1[r], s1)) bad_batch++;
                if (!same_float(y3[j * rows + r], s1)) bad_threads++;
                if (exact_type(t)) {
                    if (!same_float(s0, s1)) bad_ref++;
                } else {
                    const double e = fabs((double)s1 - s0) / (norm_of(t, w + r * wb, cols) * xn);
                    if (e > worst) worst = e;
                    if (!(e <= RTOL)) bad_ref++;
                }
            }
        }
        free(w), free(x), free(ys), free(yv), free(y1), free(y3), free(a);
    }
    char msg[256];
    if (exact_type(t)) snprintf(msg, sizeof msg, "%lld outputs, %lld differ from scalar (bit for bit)",
                                (long long)outputs, (long long)bad_ref);
    else snprintf(msg, sizeof msg, "%lld outputs, max rel. error vs scalar %.2g <= %.0e: %lld over",
                  (long long)outputs, worst, RTOL, (long long)bad_ref);
    report(bad_ref == 0, "matmul", name, lv, msg);
    snprintf(msg, sizeof msg, "%lld outputs, %lld differ alone vs batched, %lld with 3 threads", (long long)outputs,
             (long long)bad_batch, (long long)bad_threads);
    report(bad_batch == 0 && bad_threads == 0, "batch", name, lv, msg);
}

/* tk_convert (SIMD when not forced off) against the scalar element functions */
static void check_convert(int level) {
    const char *lv = LEVEL_NAMES[level];
    const size_t n16 = 65536 + 3;  /* every value, and a tail */
    uint16_t *h = malloc(2 * n16), *o16 = malloc(2 * n16);
    float *f = malloc(4 * n16);
    for (size_t i = 0; i < n16; i++) h[i] = (uint16_t)(i * 40503u);  /* a permutation of all 65536 values */
    const int src16[2] = {TK_F16, TK_BF16};
    for (int s = 0; s < 2; s++) {
        const int st = src16[s];
        int64_t bad = 0;
        tk_convert(h, (enum tk_type)st, f, TK_F32, n16, 2);
        for (size_t i = 0; i < n16; i++) {
            const float want = st == TK_F16 ? tk_fp16_to_fp32(h[i]) : tk_bf16_to_fp32(h[i]);
            bad += memcmp(&want, &f[i], 4) != 0 && !(F16C_QUIETS_NAN && isnan(want) && isnan(f[i]));
        }
        const int dt = st == TK_F16 ? TK_BF16 : TK_F16;
        tk_convert(h, (enum tk_type)st, o16, (enum tk_type)dt, n16, 1);
        for (size_t i = 0; i < n16; i++) {
            const float v = st == TK_F16 ? tk_fp16_to_fp32(h[i]) : tk_bf16_to_fp32(h[i]);
            const uint16_t want = dt == TK_F16 ? tk_fp32_to_fp16(v) : tk_fp32_to_bf16(v);
            bad += o16[i] != want && !(F16C_QUIETS_NAN && isnan(v) && (o16[i] & 0x7f80) == 0x7f80 && o16[i] & 0x7f);
        }
        char msg[128];
        snprintf(msg, sizeof msg, "all 65536 values to f32 and to %s: %lld differ", dt == TK_F16 ? "f16" : "bf16",
                 (long long)bad);
        report(bad == 0, "convert", tk_traits(st)->name, lv, msg);
    }
    /* f32 -> f16 / bf16: edge values around every rounding boundary and overflow, NaNs with payloads, random bits */
    const size_t nf = (1 << 18) + 5;
    uint32_t *u = malloc(4 * nf);
    static const uint32_t edge[] = {0, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffbfffffu,
                                    0x7fa00000u, 0x477fe000u, 0x477fefffu, 0x477ff000u, 0x477fffffu, 0x38800000u,
                                    0x387fffffu, 0x33000000u, 0x33000001u, 0x32ffffffu, 0x337fffffu, 0x3f808000u,
                                    0x3f818000u, 0x7f7fffffu, 0x00000001u, 0x3f800fffu, 0x3f801000u, 0x3f803000u};
    for (size_t i = 0; i < nf; i++) u[i] = i < COUNT(edge) ? edge[i] : (uint32_t)next();
    for (size_t i = COUNT(edge); i < nf / 2; i++)  /* bits near the f16 rounding points of normal values */
        u[i] = ((0x38800000u + (uint32_t)(next() % (0x477ff000u - 0x38800000u))) & ~0xfffu) |
               (next() & 1 ? 0x1000u : 0xfffu);
    const int dst16[2] = {TK_F16, TK_BF16};
    for (int s = 0; s < 2; s++) {
        uint16_t *o = malloc(2 * nf);
        tk_convert(u, TK_F32, o, (enum tk_type)dst16[s], nf, 2);
        int64_t bad = 0;
        for (size_t i = 0; i < nf; i++) {
            float v;
            memcpy(&v, &u[i], 4);
            bad += o[i] != (dst16[s] == TK_F16 ? tk_fp32_to_fp16(v) : tk_fp32_to_bf16(v));
        }
        char msg[128];
        snprintf(msg, sizeof msg, "%zu f32 bit patterns (edges, NaN payloads, random): %lld differ", nf, (long long)bad);
        report(bad == 0, "convert", tk_traits(dst16[s])->name, lv, msg);
        free(o);
    }
    free(h), free(o16), free(f), free(u);
}

/* quantizers: SIMD path of tk_quantize_rows against the reference, byte for byte */
static void check_quantizer(int t, int level) {
    const struct tk_type_traits *tr = tk_traits(t);
    const char *lv = LEVEL_NAMES[level];
    const int64_t cols = 4 * QK_K + (tr->block_size == QK ? 32 : 0), rows = 32;
    float *x = malloc(sizeof(float) * (size_t)(rows * cols));
    const size_t rb = tk_row_size(t, cols);
    uint8_t *q0 = malloc(rb * rows), *q1 = malloc(rb * rows);
    int64_t bad = 0;
    for (int kind = 0; kind < 7; kind++) {
        random_floats(x, rows, cols);
        for (int64_t i = 0; i < rows * cols; i++) {
            const int64_t r = i / cols, c = i % cols;
            switch (kind) {
            case 1: x[i] = (float)(r % 5) - 2.0f; break;                               /* constant rows, zero rows */
            case 2: x[i] = c % 37 == 0 ? 1e4f * (r & 1 ? -1 : 1) : x[i] * 1e-4f; break; /* outliers */
            case 3: x[i] = (float)((c * 7 + r) % 33) - 16.0f; break;                    /* exact grid values */
            case 4: x[i] = x[i] * 1e-30f; break;                                        /* tiny */
            case 5: x[i] = (float)((c * 13 + r * 3) % 31) * 0.5f + 0.25f; break;        /* grid midpoints */
            case 6: x[i] = x[i] * 1e-41f; break;                          /* subnormal: 1/d overflows */
            default: break;
            }
        }
        tk_set_force_scalar(1);
        tk_quantize_rows(t, x, q0, rows, cols, 1);
        tk_set_force_scalar(0);
        tk_quantize_rows(t, x, q1, rows, cols, 2);
        for (int64_t r = 0; r < rows; r++) bad += memcmp(q0 + r * rb, q1 + r * rb, rb) != 0;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "%lld rows (random, constant, outliers, grid, tiny, midpoints, subnormal): %lld differ%s",
             (long long)(7 * rows), (long long)bad,
             has_simd_quantizer(t) ? "" : " (no SIMD quantizer: reference both ways)");
    report(bad == 0, "quantize", tr->name, lv, msg);
    free(x), free(q0), free(q1);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);  /* one line at a time in CI logs, even when piped */
    tk_set_force_scalar(0);
    int ran = 0;
    for (int level = 1; level <= 3; level++) {
        tk_set_isa_limit(level);
        if (current_level() != level) continue;  /* the CPU lacks it */
        ran++;
        printf("== level %d: %s\n", level, LEVEL_NAMES[level]);
        seed(1000 + level);
        check_convert(level);
        for (int i = 0; i < COUNT(DOT_TYPES); i++) check_vec_dot(DOT_TYPES[i], level);
        for (int i = 0; i < COUNT(DOT_TYPES); i++) check_matmul(DOT_TYPES[i], level);
        for (int i = 0; i < COUNT(QUANT_TYPES); i++) check_quantizer(QUANT_TYPES[i], level);
    }
    tk_set_isa_limit(3);
    if (!ran) {
        printf("FAIL no SIMD level on this CPU: nothing checked\n");
        return 1;
    }
    printf("%d checks, %d failed, %d level(s)\n", checks, failures, ran);
    return failures ? 1 : 0;
}
