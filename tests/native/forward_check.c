/* forward_check: a tiny real model's forward pass in the native core, without Python, against logits recorded on x86.

   Usage: forward_check BUNDLE — the folder tests/native/reference_bundle.py writes: stories260K as our converter and
   quantizer write it (F32, Q8_0, Q4_0), a prompt, and the logits runtime.api.Llama computed for every prompt token on
   x86 (checked there against llama.cpp's before they were written). Built by `make test-kernels` (this machine) and
   `make test-arm64` (ARM64, under qemu-aarch64 with and without dotprod/i8mm).

   Each GGUF file is read by the small reader below (test code: the header, the llama hyper-parameters, the tensor
   table) and described to native/engine.h's tk_engine_new as runtime/arch/base.py describes it from Python; then, at
   every instruction-set level the CPU has (scalar, then x86 AVX2/AVX-VNNI/AVX512-VNNI or ARM64 NEON/dotprod/i8mm):

   * the prompt in one batch on 2 threads, all logits, against the recorded ones: max |diff| <= the file's tolerance
     (cases.txt: 1e-5 for F32, the runtime tests' 1e-2 for the quantized files);
   * the prompt again one token per call on 1 thread, each token's logits bit for bit the batch's (the engine's
     token-alone-or-batched promise).

   One line per check on stdout; exit status 1 on any failure. With FILE NTOKENS after BUNDLE: only NTOKENS tokens of
   that file, one per call (what tests/native/insn_counts.sh counts). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine.h"
#include "levels.h"

#define MAX_TOKENS 512
#define PATH_LEN 4096

static int failures, checks;

static void report(int ok, const char *what, const char *type, const char *level, const char *detail) {
    checks++;
    if (!ok) failures++;
    printf("%s %-9s %-5s %-10s %s\n", ok ? "ok  " : "FAIL", what, type, level, detail);
}

/* ---------------------------------------------------------------------------------------- GGUF reader */

enum { G_U8, G_I8, G_U16, G_I16, G_U32, G_I32, G_F32, G_BOOL, G_STR, G_ARR, G_U64, G_I64, G_F64, G_NTYPES };
static const size_t G_SIZE[G_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

struct gguf {
    uint8_t *buf;  /* the whole file, 64-byte aligned (the engine reads tensors in place, as from a mapping) */
    size_t size, pos;
    const char *err;
    /* the llama hyper-parameters (-1 / NAN when absent) */
    int64_t ctx, embd, layers, ff, heads, heads_kv, key_len, rot, vocab;
    double eps, rope_base;
    int is_llama;
    int nt;
    struct tk_tensor_desc *t;
};

static int need(struct gguf *g, size_t n) {
    if (g->err) return 0;
    if (n > g->size - g->pos) {
        g->err = "truncated";
        return 0;
    }
    return 1;
}
static uint64_t rd(struct gguf *g, size_t n) {  /* little-endian unsigned of n bytes */
    uint64_t v = 0;
    if (!need(g, n)) return 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)g->buf[g->pos + i] << (8 * i);
    g->pos += n;
    return v;
}
/* a string: its bytes in place (not terminated), length in *len */
static const char *rd_str(struct gguf *g, uint64_t *len) {
    *len = rd(g, 8);
    if (!need(g, *len)) return "";
    const char *s = (const char *)g->buf + g->pos;
    g->pos += *len;
    return s;
}
static int is(const char *s, uint64_t len, const char *name) { return strlen(name) == len && !memcmp(s, name, len); }

/* a scalar value of type vt as a number (integers and floats alike) */
static double rd_number(struct gguf *g, uint32_t vt) {
    const uint64_t v = rd(g, G_SIZE[vt]);
    switch (vt) {
    case G_I8: return (int8_t)v;
    case G_I16: return (int16_t)v;
    case G_I32: return (int32_t)v;
    case G_I64: return (double)(int64_t)v;
    case G_F32: { float f; uint32_t u = (uint32_t)v; memcpy(&f, &u, 4); return f; }
    case G_F64: { double d; memcpy(&d, &v, 8); return d; }
    default: return (double)v;
    }
}

static void skip_value(struct gguf *g, uint32_t vt) {
    uint64_t len;
    if (vt >= G_NTYPES) g->err = "bad value type";
    else if (vt == G_STR) rd_str(g, &len);
    else if (vt == G_ARR) {
        const uint32_t et = (uint32_t)rd(g, 4);
        const uint64_t n = rd(g, 8);
        if (et == G_ARR || et >= G_NTYPES) g->err = "bad array type";
        for (uint64_t i = 0; i < n && !g->err; i++) skip_value(g, et);
    } else rd(g, G_SIZE[vt]);
}

static void read_kv(struct gguf *g, size_t *alignment) {
    uint64_t klen, slen;
    const char *key = rd_str(g, &klen);
    const uint32_t vt = (uint32_t)rd(g, 4);
    if (g->err) return;
    if (vt == G_STR && is(key, klen, "general.architecture")) {
        const char *s = rd_str(g, &slen);
        g->is_llama = is(s, slen, "llama");
        return;
    }
    if (vt == G_ARR && is(key, klen, "tokenizer.ggml.tokens")) {
        const size_t at = g->pos;
        rd(g, 4);
        g->vocab = (int64_t)rd(g, 8);
        g->pos = at;
        skip_value(g, vt);
        return;
    }
    if (vt == G_STR || vt == G_ARR || vt >= G_NTYPES) {
        skip_value(g, vt);
        return;
    }
    const double v = rd_number(g, vt);
    static const struct { const char *key; size_t off; } INTS[] = {
        {"llama.context_length", offsetof(struct gguf, ctx)},
        {"llama.embedding_length", offsetof(struct gguf, embd)},
        {"llama.block_count", offsetof(struct gguf, layers)},
        {"llama.feed_forward_length", offsetof(struct gguf, ff)},
        {"llama.attention.head_count", offsetof(struct gguf, heads)},
        {"llama.attention.head_count_kv", offsetof(struct gguf, heads_kv)},
        {"llama.attention.key_length", offsetof(struct gguf, key_len)},
        {"llama.rope.dimension_count", offsetof(struct gguf, rot)},
    };
    for (size_t i = 0; i < sizeof INTS / sizeof *INTS; i++)
        if (is(key, klen, INTS[i].key)) *(int64_t *)((char *)g + INTS[i].off) = (int64_t)v;
    if (is(key, klen, "llama.attention.layer_norm_rms_epsilon")) g->eps = v;
    if (is(key, klen, "llama.rope.freq_base")) g->rope_base = v;
    if (is(key, klen, "general.alignment")) *alignment = (size_t)v;
}

static void gguf_free(struct gguf *g) {
    if (g->t)
        for (int i = 0; i < g->nt; i++) free((char *)g->t[i].name);
    free(g->t);
    free(g->buf);
}

/* 0, or -1 with g->err set */
static int gguf_read(struct gguf *g, const char *path) {
    memset(g, 0, sizeof *g);
    g->ctx = g->embd = g->layers = g->ff = g->heads = g->heads_kv = g->key_len = g->rot = g->vocab = -1;
    g->eps = NAN;
    g->rope_base = 10000.0;
    FILE *f = fopen(path, "rb");
    if (!f) return g->err = "cannot open", -1;
    fseek(f, 0, SEEK_END);
    g->size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g->buf = aligned_alloc(64, (g->size + 63) / 64 * 64);
    const int ok = g->buf && fread(g->buf, 1, g->size, f) == g->size;
    fclose(f);
    if (!ok) return g->err = "cannot read", -1;
    if (rd(g, 4) != 0x46554747u || rd(g, 4) != 3) return g->err = "not a GGUF v3 file", -1;
    const uint64_t nt = rd(g, 8), nkv = rd(g, 8);
    if (nt > 100000 || nkv > 100000) return g->err = "implausible counts", -1;
    size_t alignment = 32;
    for (uint64_t i = 0; i < nkv && !g->err; i++) read_kv(g, &alignment);
    g->t = calloc(nt ? nt : 1, sizeof *g->t);
    uint64_t *offsets = calloc(nt ? nt : 1, sizeof *offsets);
    if (!g->t || !offsets) return free(offsets), g->err = "out of memory", -1;
    for (uint64_t i = 0; i < nt && !g->err; i++) {
        struct tk_tensor_desc *d = &g->t[i];
        uint64_t len;
        const char *name = rd_str(g, &len);
        const uint32_t nd = (uint32_t)rd(g, 4);
        if (nd < 1 || nd > 4) g->err = "bad tensor rank";
        int64_t dims[4] = {1, 1, 1, 1};
        for (uint32_t k = 0; k < nd && !g->err; k++) dims[k] = (int64_t)rd(g, 8);
        d->type = (int)rd(g, 4);
        offsets[i] = rd(g, 8);
        if (g->err) break;
        char *copy = malloc(len + 1);
        if (!copy) return free(offsets), g->err = "out of memory", -1;
        memcpy(copy, name, len);
        copy[len] = 0;
        d->name = copy;
        g->nt = (int)i + 1;
        d->cols = dims[0];
        d->rows = dims[1] * dims[2] * dims[3];  /* stacked experts' rows one after the other, as runtime/model.py */
        if (!tk_traits(d->type)) g->err = "unknown tensor type";
        else d->nbytes = tk_row_size(d->type, d->cols) * (size_t)d->rows;
    }
    const size_t data = (g->pos + alignment - 1) / alignment * alignment;
    for (int i = 0; i < g->nt && !g->err; i++) {
        if (offsets[i] > g->size - data || g->t[i].nbytes > g->size - data - offsets[i]) g->err = "tensor out of file";
        else g->t[i].data = g->buf + data + offsets[i];
    }
    free(offsets);
    return g->err ? -1 : 0;
}

/* the engine's description of a llama file, as runtime/model.py's _hparams and runtime/arch/base.py's
   engine_description make it (recipe of archs/llama.py: RMS norm, adjacent-pair rope, SwiGLU) */
static int llama_hparams(const struct gguf *g, struct tk_hparams *hp, const char **why) {
    if (!g->is_llama) return *why = "not a llama file", -1;
    if (g->embd < 1 || g->layers < 1 || g->ff < 1 || g->heads < 1 || g->vocab < 1 || g->ctx < 1 || isnan(g->eps))
        return *why = "missing hyper-parameters", -1;
    const int64_t head_dim = g->key_len > 0 ? g->key_len : g->embd / g->heads;
    *hp = (struct tk_hparams){
        .norm = TK_NORM_RMS, .rope = TK_ROPE_NORM, .ffn = TK_FFN_SWIGLU,
        .n_vocab = g->vocab, .n_embd = g->embd, .n_layer = g->layers, .n_head = g->heads,
        .n_head_kv = g->heads_kv > 0 ? g->heads_kv : g->heads, .head_dim = head_dim, .n_ff = g->ff,
        .n_rot = g->rot >= 0 ? g->rot : head_dim,
        .n_expert = 0, .n_expert_used = 0, .n_ff_exp = 0, .n_swa = 0, .swa_period = 0,
        .embd_scale = 1.0f,
        .rope_base_swa = (float)g->rope_base, .rope_freq_scale_swa = 1.0f,
        .rope_base = (float)g->rope_base, .rope_freq_scale = 1.0f, .eps = (float)g->eps,
        .rope_attn_factor = 1.0f, .n_ctx_orig = g->ctx,
        .attn_scale = 1.0f / sqrtf((float)head_dim),
        .attn_softcap = 0.0f, .final_softcap = 0.0f,
    };
    return 0;
}

/* ------------------------------------------------------------------------------------------- checks */

static float *read_floats(const char *path, size_t n) {
    float *x = malloc(n * sizeof *x);
    FILE *f = fopen(path, "rb");
    size_t got = 0;
    if (x && f) {
        for (size_t i = 0; i < n; i++) {  /* little-endian float32, whatever the host's order */
            uint8_t b[4];
            if (fread(b, 1, 4, f) != 4) break;
            const uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
            memcpy(&x[i], &u, 4);
            got++;
        }
        if (fgetc(f) != EOF) got = 0;  /* more than n: not this prompt's logits */
    }
    if (f) fclose(f);
    if (got != n) {
        free(x);
        return NULL;
    }
    return x;
}

/* the checks of one model file at the level in force now */
static void check_level(struct tk_engine *e, const char *type, double tol, const int32_t *tokens, int64_t n,
                        const float *ref) {
    const int level = current_level();
    const char *lv = LEVEL_NAMES[level];
    const int64_t nv = tk_engine_vocab(e);
    char msg[256];
    float *batch = malloc((size_t)(n * nv) * sizeof *batch), *one = malloc((size_t)nv * sizeof *one);
    struct tk_kv *kv = tk_kv_new(e, n, TK_F32, TK_F32);
    int rc = batch && one && kv ? tk_engine_forward(e, kv, tokens, n, 0, batch, 1, 2) : -3;
    if (rc) {
        snprintf(msg, sizeof msg, "batch of %lld tokens: error %d", (long long)n, rc);
        report(0, "forward", type, lv, msg);
    } else {
        double worst = 0;
        int64_t at = 0;
        for (int64_t i = 0; i < n * nv; i++) {
            const double d = fabs((double)batch[i] - ref[i]);
            if (!(d <= worst)) worst = d, at = i;  /* a NaN is the worst */
        }
        snprintf(msg, sizeof msg, "%lld tokens batched: max |logit - x86's| %.3g (token %lld, tolerance %g)",
                 (long long)n, worst, (long long)(at / nv), tol);
        report(worst <= tol, "forward", type, lv, msg);
        /* a fresh cache, one token per call */
        tk_kv_free(kv);
        kv = tk_kv_new(e, n, TK_F32, TK_F32);
        int64_t differ = -1;
        for (int64_t i = 0; i < n && !rc; i++) {
            rc = kv ? tk_engine_forward(e, kv, tokens + i, 1, i, one, 0, 1) : -3;
            if (!rc && differ < 0 && memcmp(one, batch + i * nv, (size_t)nv * sizeof *one)) differ = i;
        }
        if (rc) snprintf(msg, sizeof msg, "one token per call: error %d", rc);
        else if (differ >= 0)
            snprintf(msg, sizeof msg, "one token per call: token %lld's logits differ from the batch's",
                     (long long)differ);
        else snprintf(msg, sizeof msg, "one token per call: every token's logits the batch's bit for bit");
        report(!rc && differ < 0, "alone", type, lv, msg);
    }
    tk_kv_free(kv);
    free(batch), free(one);
}

/* dir/file read and its engine built (NULL, with *why saying why, when either fails); the path left in path */
static struct tk_engine *open_engine(const char *dir, const char *file, struct gguf *g, char path[PATH_LEN],
                                     char err[256], const char **why) {
    struct tk_hparams hp;
    struct tk_engine *e = NULL;
    snprintf(path, PATH_LEN, "%s/%s", dir, file);
    if (gguf_read(g, path)) *why = g->err;
    else if (!llama_hparams(g, &hp, why) && !(e = tk_engine_new(&hp, g->t, g->nt, err, 256))) *why = err;
    return e;
}

static void check_model(const char *dir, const char *file, const char *type, double tol, const char *logits,
                        const int32_t *tokens, int64_t n) {
    char path[PATH_LEN], msg[PATH_LEN + 300], err[256] = "";
    struct gguf g;
    const char *why = NULL;
    struct tk_engine *e = open_engine(dir, file, &g, path, err, &why);
    float *ref = NULL;
    if (e) {
        snprintf(path, sizeof path, "%s/%s", dir, logits);
        if (!(ref = read_floats(path, (size_t)(n * tk_engine_vocab(e))))) why = "recorded logits missing or of another size";
    }
    snprintf(msg, sizeof msg, "%s: %s", why ? path : file, why ? why : "read, engine built");
    report(!why, "load", type, "", msg);
    if (!why) {
        tk_set_force_scalar(1);
        check_level(e, type, tol, tokens, n, ref);
        tk_set_force_scalar(0);
        for (int level = 1; level <= 3; level++) {
            tk_set_isa_limit(level);
            if (current_level() == level) check_level(e, type, tol, tokens, n, ref);
        }
        tk_set_isa_limit(3);
    }
    free(ref);
    tk_engine_free(e);
    gguf_free(&g);
}

/* forward_check BUNDLE FILE N: N tokens of FILE, one per call (generation) at the level in force, and nothing else
   checked: the workload tests/native/insn_counts.sh counts instructions of */
static int generate(const char *dir, const char *file, int64_t n) {
    char path[PATH_LEN], err[256] = "";
    struct gguf g;
    const char *why = NULL;
    struct tk_engine *e = open_engine(dir, file, &g, path, err, &why);
    struct tk_kv *kv = e ? tk_kv_new(e, n, TK_F32, TK_F32) : NULL;
    float *logits = e ? malloc((size_t)tk_engine_vocab(e) * sizeof *logits) : NULL;
    if (!why && (!kv || !logits)) why = "out of memory";
    for (int64_t i = 0; i < n && !why; i++) {
        const int32_t token = (int32_t)(1 + i * 37 % (tk_engine_vocab(e) - 1));
        if (tk_engine_forward(e, kv, &token, 1, i, logits, 0, 1)) why = "forward pass failed";
    }
    if (why) fprintf(stderr, "%s: %s\n", path, why);
    else printf("%lld tokens at level %s\n", (long long)n, LEVEL_NAMES[current_level()]);
    free(logits);
    tk_kv_free(kv);
    tk_engine_free(e);
    gguf_free(&g);
    return why ? 1 : 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4) return generate(argv[1], argv[2], atoll(argv[3]) > 0 ? atoll(argv[3]) : 1);
    if (argc != 2) {
        fprintf(stderr, "usage: %s BUNDLE (the folder tests/native/reference_bundle.py writes) [FILE NTOKENS]\n",
                argv[0]);
        return 2;
    }
    char path[PATH_LEN], line[8192];
    snprintf(path, sizeof path, "%s/cases.txt", argv[1]);
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("FAIL cannot open %s\n", path);
        return 1;
    }
    int32_t tokens[MAX_TOKENS];
    int64_t n = 0;
    int models = 0;
    while (fgets(line, sizeof line, f)) {
        char file[256], type[32], logits[256];
        double tol;
        int used, k;
        long long count;
        if (sscanf(line, "tokens %lld%n", &count, &used) == 1 && count > 0 && count <= MAX_TOKENS) {
            const char *p = line + used;
            for (n = 0; n < count && sscanf(p, "%d%n", &tokens[n], &k) == 1; n++) p += k;
            if (n != count) n = 0;
        } else if (sscanf(line, "model %255s %31s %lf %255s", file, type, &tol, logits) == 4 && n > 0) {
            check_model(argv[1], file, type, tol, logits, tokens, n);
            models++;
        } else {
            printf("FAIL %s: cannot read the line: %s", path, line);
            failures++;
        }
    }
    fclose(f);
    if (!models) {
        printf("FAIL %s: no model to check\n", path);
        return 1;
    }
    printf("%d checks, %d failed, %d model file(s)\n", checks, failures, models);
    return failures ? 1 : 0;
}
