/* The forward pass (see engine.h). One tk_parallel call per batch; every step splits its work across the threads
   and ends at a barrier. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine.h"
#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TK_X86 1
#endif

/* a matrix of the file, or rows of one (an expert's, a fused tensor's part); id: its tensor's index in the
   description (-1: its statistics are not collected, as for the second half of a fused gate/up), expert: its index in
   a stacked expert tensor (-1: none) */
struct tk_mat { const void *data; int type; int64_t rows, cols; size_t row_bytes; int id; int64_t expert; };

struct tk_layer {
    const float *attn_norm, *attn_norm_b, *ffn_norm, *ffn_norm_b;
    const float *bqkv, *bq, *bk, *bv, *bo, *b_up, *b_down;
    const float *q_norm, *k_norm;  /* RMS norm weights of every q / k head (head_dim), or NULL */
    const float *attn_post_norm, *ffn_post_norm;  /* RMS norms of the attention / feed-forward output, or NULL */
    struct tk_mat wqkv, wq, wk, wv, wo, gate, up, down;
    struct tk_mat gate_inp, gate_exps, up_exps, down_exps;  /* mixture of experts: router, experts stacked */
};

struct tk_engine {
    struct tk_hparams hp;
    struct tk_mat tok_embd, pos_embd, output;
    const float *out_norm, *out_norm_b;
    const float *rope_freqs;  /* llama3 frequency factors, one per rotated pair (NULL: none) */
    const float *rope_long, *rope_short;  /* LongRoPE's factors for long / short contexts (Phi-3; NULL: none) */
    struct tk_layer *layers;
    float **owned;       /* f32 copies of the 1-D tensors */
    int nowned;
    float rope_theta_scale, rope_theta_scale_swa;
    struct tk_act_stats *stats;  /* activation statistics being collected (NULL: none) */
};

/* llama.cpp's standard pattern: every layer but each swa_period-th slides (swa_period 0: all of them) */
static int is_swa(const struct tk_hparams *hp, int64_t il) {
    return hp->n_swa > 0 && (hp->swa_period == 0 || il % hp->swa_period < hp->swa_period - 1);
}

/* keys and values of each (layer, position): a row of kv_dim elements of type_k / type_v, row_k / row_v bytes */
struct tk_kv { int type_k, type_v; int64_t n_ctx, n_layer, kv_dim; size_t row_k, row_v; void *k, *v; };

/* ------------------------------------------------------------------------------------------------ description */

/* The per-layer tensors by GGUF name suffix: where each goes in struct tk_layer, and whether it is a matrix (kept
   in place, stored type) or a 1-D norm weight/bias (read once into f32) and then of which length. */
enum vec_len { MATRIX = 0, LEN_EMBD, LEN_HEAD, LEN_Q, LEN_KV, LEN_QKV, LEN_FF };
#define VEC(suffix, field, len) {suffix, offsetof(struct tk_layer, field), len}
#define MAT(suffix, field) {suffix, offsetof(struct tk_layer, field), MATRIX}
static const struct { const char *suffix; size_t offset; enum vec_len len; } LAYER_TENSORS[] = {
    VEC("attn_norm.weight", attn_norm, LEN_EMBD), VEC("attn_norm.bias", attn_norm_b, LEN_EMBD),
    VEC("ffn_norm.weight", ffn_norm, LEN_EMBD), VEC("ffn_norm.bias", ffn_norm_b, LEN_EMBD),
    VEC("attn_qkv.bias", bqkv, LEN_QKV), VEC("attn_q.bias", bq, LEN_Q), VEC("attn_k.bias", bk, LEN_KV),
    VEC("attn_v.bias", bv, LEN_KV), VEC("attn_output.bias", bo, LEN_EMBD), VEC("ffn_up.bias", b_up, LEN_FF),
    VEC("ffn_down.bias", b_down, LEN_EMBD), VEC("attn_q_norm.weight", q_norm, LEN_HEAD),
    VEC("attn_k_norm.weight", k_norm, LEN_HEAD), VEC("post_attention_norm.weight", attn_post_norm, LEN_EMBD),
    VEC("post_ffw_norm.weight", ffn_post_norm, LEN_EMBD),
    MAT("attn_qkv.weight", wqkv), MAT("attn_q.weight", wq), MAT("attn_k.weight", wk), MAT("attn_v.weight", wv),
    MAT("attn_output.weight", wo), MAT("ffn_gate.weight", gate), MAT("ffn_up.weight", up),
    MAT("ffn_down.weight", down), MAT("ffn_gate_inp.weight", gate_inp), MAT("ffn_gate_exps.weight", gate_exps),
    MAT("ffn_up_exps.weight", up_exps), MAT("ffn_down_exps.weight", down_exps),
};
#undef VEC
#undef MAT

/* the length a 1-D layer tensor must have (its matrix's rows for a bias) */
static int64_t vec_len(const struct tk_hparams *hp, enum vec_len len) {
    const int64_t qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    switch (len) {
    case LEN_HEAD: return hp->head_dim;
    case LEN_Q: return qd;
    case LEN_KV: return kvd;
    case LEN_QKV: return qd + 2 * kvd;
    case LEN_FF: return hp->n_ff;
    default: return hp->n_embd;
    }
}

/* A tensor as described: a name, data, a known type, at least one row of whole blocks, and rows x cols that fit the
   bytes given (computed without overflow). */
static int check_desc(const struct tk_tensor_desc *d, char *err, int errlen) {
    if (!d->name) { snprintf(err, errlen, "a tensor has no name"); return -1; }
    const struct tk_type_traits *tt = tk_traits(d->type);
    if (!tt) { snprintf(err, errlen, "tensor %s: unknown type %d", d->name, d->type); return -1; }
    size_t row, bytes;  /* (cols / block size) x block bytes x rows, each product checked: tk_row_size would wrap */
    if (!d->data || d->rows < 1 || d->cols < 1 || d->cols % tt->block_size ||
        __builtin_mul_overflow((size_t)(d->cols / tt->block_size), (size_t)tt->type_size, &row) ||
        __builtin_mul_overflow((size_t)d->rows, row, &bytes) || bytes > d->nbytes) {
        snprintf(err, errlen, "tensor %s: %lld x %lld of type %s does not fit its %zu bytes of data", d->name,
                 (long long)d->rows, (long long)d->cols, tt->name, d->nbytes);
        return -1;
    }
    return 0;
}

static int set_mat(struct tk_mat *m, const struct tk_tensor_desc *d, int id, char *err, int errlen) {
    const struct tk_dot_traits *dt = tk_dot_traits(d->type);
    const struct tk_type_traits *tt = tk_traits(d->type);
    if (!dt || !tt || d->cols % tt->block_size || d->cols % tk_traits(dt->vec_dot_type)->block_size) {
        snprintf(err, errlen, "tensor %s: type %d with rows of %lld cannot be multiplied", d->name, d->type,
                 (long long)d->cols);
        return -1;
    }
    *m = (struct tk_mat){d->data, d->type, d->rows, d->cols, tk_row_size(d->type, d->cols), id, -1};
    return 0;
}

/* rows r0..r0+rows-1 of m, in place */
static struct tk_mat mat_rows(const struct tk_mat *m, int64_t r0, int64_t rows) {
    return (struct tk_mat){(const char *)m->data + (size_t)r0 * m->row_bytes, m->type, rows, m->cols, m->row_bytes,
                           m->id, -1};
}

static float *own_f32(struct tk_engine *e, const struct tk_tensor_desc *d) {
    float *v = malloc(sizeof(float) * (size_t)(d->rows * d->cols));
    if (!v) return NULL;
    if (tk_dequantize_rows(d->type, d->data, v, d->rows, d->cols, 1) != 0) { free(v); return NULL; }
    e->owned[e->nowned++] = v;
    return v;
}

static int check_mat(const struct tk_mat *m, const char *what, int64_t rows, int64_t cols, char *err, int errlen) {
    if (!m->data) { snprintf(err, errlen, "missing tensor %s", what); return -1; }
    if (m->rows != rows || m->cols != cols) {
        snprintf(err, errlen, "tensor %s has shape %lldx%lld, expected %lldx%lld", what, (long long)m->rows,
                 (long long)m->cols, (long long)rows, (long long)cols);
        return -1;
    }
    return 0;
}

static int check_vec(const struct tk_tensor_desc *d, int64_t n, char *err, int errlen) {
    int64_t count;
    if (__builtin_mul_overflow(d->rows, d->cols, &count) || count != n) {
        snprintf(err, errlen, "tensor %s has %lld x %lld elements, expected %lld", d->name, (long long)d->rows,
                 (long long)d->cols, (long long)n);
        return -1;
    }
    return 0;
}

/* a 1-D tensor of n elements, read into f32 */
static const float *read_vec(struct tk_engine *e, const struct tk_tensor_desc *d, int64_t n, char *err, int errlen) {
    if (check_vec(d, n, err, errlen)) return NULL;
    const float *v = own_f32(e, d);
    if (!v) snprintf(err, errlen, "tensor %s: cannot read", d->name);
    return v;
}

void tk_engine_free(struct tk_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->nowned; i++) free(e->owned[i]);
    free(e->owned);
    free(e->layers);
    free(e);
}

struct tk_engine *tk_engine_new(const struct tk_hparams *hp, const struct tk_tensor_desc *t, int nt, char *err,
                                int errlen) {
    struct tk_engine *e = calloc(1, sizeof *e);
    if (!e) { snprintf(err, errlen, "out of memory"); return NULL; }
    e->hp = *hp;
    const int64_t d = hp->n_embd, hd = hp->head_dim, nl = hp->n_layer;
    if ((hp->norm != TK_NORM_RMS && hp->norm != TK_NORM_LAYER) || hp->rope < TK_ROPE_NONE || hp->rope > TK_ROPE_NEOX ||
        (hp->ffn != TK_FFN_SWIGLU && hp->ffn != TK_FFN_GELU && hp->ffn != TK_FFN_GEGLU) || hp->n_swa < 0 ||
        hp->swa_period < 0 || !(hp->embd_scale > 0) || !(hp->rope_base_swa > 0) || !(hp->rope_freq_scale_swa > 0) ||
        !(hp->rope_attn_factor > 0) || hp->n_ctx_orig < 0 || !(hp->attn_scale > 0) || !(hp->attn_softcap >= 0) ||
        !(hp->final_softcap >= 0) || !(hp->rope_base > 0) || !(hp->rope_freq_scale > 0) || !(hp->eps > 0)) {
        snprintf(err, errlen, "unknown part in the engine description, or a number out of range (norm %d, rope %d, ffn %d)", hp->norm, hp->rope,
                 hp->ffn);
        goto fail;
    }
    if (hp->n_expert ? (hp->n_expert < 0 || hp->n_expert > 1024 || hp->n_expert_used <= 0 ||
                        hp->n_expert_used > hp->n_expert || hp->n_ff_exp <= 0)
                     : (hp->n_expert_used != 0 || hp->n_ff_exp != 0)) {
        snprintf(err, errlen, "inconsistent expert counts (experts %lld, used %lld, width %lld)",
                 (long long)hp->n_expert, (long long)hp->n_expert_used, (long long)hp->n_ff_exp);
        goto fail;
    }
    if (d <= 0 || d > TK_MAX_WIDTH || nl <= 0 || nl > TK_MAX_LAYERS || hp->n_head <= 0 || hp->n_head > TK_MAX_WIDTH ||
        hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv || hd <= 0 || hd > TK_MAX_WIDTH || hp->n_ff <= 0 ||
        hp->n_ff > TK_MAX_WIDTH || hp->n_ff_exp > TK_MAX_WIDTH || hp->n_vocab <= 0 || hp->n_vocab > INT32_MAX ||
        hp->n_rot < 0 || hp->n_rot > hd || hp->n_rot % 2) {
        snprintf(err, errlen, "inconsistent hyper-parameters (n_embd %lld, n_layer %lld, n_head %lld, n_head_kv %lld, "
                 "head_dim %lld, n_ff %lld, n_vocab %lld, n_rot %lld)", (long long)d, (long long)nl,
                 (long long)hp->n_head, (long long)hp->n_head_kv, (long long)hd, (long long)hp->n_ff,
                 (long long)hp->n_vocab, (long long)hp->n_rot);
        goto fail;
    }
    if (hd % 8) {
        snprintf(err, errlen, "head size %lld is not a multiple of 8, which the attention kernels need", (long long)hd);
        goto fail;
    }
    e->layers = calloc((size_t)nl, sizeof *e->layers);
    e->owned = calloc((size_t)nt + 1, sizeof *e->owned);
    if (!e->layers || !e->owned) { snprintf(err, errlen, "out of memory"); goto fail; }
    for (int i = 0; i < nt; i++) {
        const struct tk_tensor_desc *x = &t[i];
        if (check_desc(x, err, errlen)) goto fail;
        int64_t layer = -1;
        const char *suffix = NULL;
        if (!strncmp(x->name, "blk.", 4) && x->name[4] >= '0' && x->name[4] <= '9') {
            /* blk.<decimal>.<suffix>, the number read without overflow (sscanf's %d is undefined past INT_MAX) */
            const char *c = x->name + 4;
            layer = 0;
            for (; *c >= '0' && *c <= '9'; c++)
                if ((layer = layer * 10 + (*c - '0')) >= nl) {
                    snprintf(err, errlen, "tensor %s: layer beyond block_count", x->name);
                    goto fail;
                }
            suffix = *c == '.' ? c + 1 : NULL;
        }
        if (suffix) {
            for (size_t k = 0; k < sizeof LAYER_TENSORS / sizeof *LAYER_TENSORS; k++) {
                if (strcmp(suffix, LAYER_TENSORS[k].suffix)) continue;
                char *field = (char *)&e->layers[layer] + LAYER_TENSORS[k].offset;
                if (LAYER_TENSORS[k].len == MATRIX) {
                    if (set_mat((struct tk_mat *)field, x, i, err, errlen)) goto fail;
                } else {
                    const float *v = read_vec(e, x, vec_len(hp, LAYER_TENSORS[k].len), err, errlen);
                    if (!v) goto fail;
                    *(const float **)field = v;
                }
            }
        } else if (!strcmp(x->name, "token_embd.weight")) {
            if (set_mat(&e->tok_embd, x, i, err, errlen)) goto fail;
        } else if (!strcmp(x->name, "position_embd.weight")) {
            if (set_mat(&e->pos_embd, x, i, err, errlen)) goto fail;
        } else if (!strcmp(x->name, "output.weight")) {
            if (set_mat(&e->output, x, i, err, errlen)) goto fail;
        } else if (!strcmp(x->name, "rope_freqs.weight") || !strcmp(x->name, "rope_factors_long.weight") ||
                   !strcmp(x->name, "rope_factors_short.weight")) {
            const float *v = read_vec(e, x, hp->n_rot / 2, err, errlen);
            if (!v) goto fail;
            const float **slot = !strcmp(x->name, "rope_freqs.weight")        ? &e->rope_freqs
                                 : !strcmp(x->name, "rope_factors_long.weight") ? &e->rope_long
                                                                                : &e->rope_short;
            *slot = v;
        } else if (!strcmp(x->name, "output_norm.weight") || !strcmp(x->name, "output_norm.bias")) {
            const float *v = read_vec(e, x, d, err, errlen);
            if (!v) goto fail;
            if (x->name[12] == 'w') e->out_norm = v; else e->out_norm_b = v;
        }
    }
    /* tied embeddings: either one stands for the other */
    if (!e->output.data) e->output = e->tok_embd;
    if (!e->tok_embd.data) e->tok_embd = e->output;
    if (check_mat(&e->tok_embd, "token_embd.weight", hp->n_vocab, d, err, errlen)) goto fail;
    if (check_mat(&e->output, "output.weight", hp->n_vocab, d, err, errlen)) goto fail;
    if (!e->out_norm) { snprintf(err, errlen, "missing tensor output_norm.weight"); goto fail; }
    if (!e->rope_long != !e->rope_short || (e->rope_long && e->rope_freqs)) {
        snprintf(err, errlen, "rope factors: rope_factors_long and rope_factors_short go together, without rope_freqs");
        goto fail;
    }
    if (hp->rope == TK_ROPE_NONE && check_mat(&e->pos_embd, "position_embd.weight", e->pos_embd.rows ? e->pos_embd.rows : 1, d, err, errlen)) goto fail;
    const int64_t qd = hp->n_head * hd, kvd = hp->n_head_kv * hd;
    for (int64_t l = 0; l < nl; l++) {
        struct tk_layer *L = &e->layers[l];
        char name[64];
#define NEED_MAT(m, what, r, c) do { snprintf(name, sizeof name, "blk.%lld." what, (long long)l); \
            if (check_mat(&L->m, name, r, c, err, errlen)) goto fail; } while (0)
#define NEED_VEC(v, what) do { if (!L->v) { snprintf(err, errlen, "missing tensor blk.%lld." what, (long long)l); \
            goto fail; } } while (0)
        if (!L->q_norm != !L->k_norm) {
            snprintf(err, errlen, "layer %lld has only one of attn_q_norm / attn_k_norm", (long long)l);
            goto fail;
        }
        NEED_VEC(attn_norm, "attn_norm.weight");
        NEED_VEC(ffn_norm, "ffn_norm.weight");
        if (L->wqkv.data) {
            NEED_MAT(wqkv, "attn_qkv.weight", qd + 2 * kvd, d);
        } else {
            NEED_MAT(wq, "attn_q.weight", qd, d);
            NEED_MAT(wk, "attn_k.weight", kvd, d);
            NEED_MAT(wv, "attn_v.weight", kvd, d);
        }
        NEED_MAT(wo, "attn_output.weight", d, qd);
        if (L->gate_inp.data) {  /* experts: each a SwiGLU of width n_ff_exp, stacked in one tensor per matrix */
            const int64_t ne = hp->n_expert, fe = hp->n_ff_exp;
            if (ne == 0 || hp->ffn != TK_FFN_SWIGLU || L->ffn_post_norm || L->gate.data || L->up.data ||
                L->down.data) {
                snprintf(err, errlen, "layer %lld: experts without expert counts, with a feed-forward other than "
                         "SwiGLU, or beside a dense feed-forward or its post-norm", (long long)l);
                goto fail;
            }
            NEED_MAT(gate_inp, "ffn_gate_inp.weight", ne, d);
            NEED_MAT(gate_exps, "ffn_gate_exps.weight", ne * fe, d);
            NEED_MAT(up_exps, "ffn_up_exps.weight", ne * fe, d);
            NEED_MAT(down_exps, "ffn_down_exps.weight", ne * d, fe);
        } else {
            if (hp->ffn != TK_FFN_GELU && !L->gate.data && L->up.rows == 2 * hp->n_ff && !L->b_up) {
                /* gate and up fused in ffn_up (Phi-3): the gate is its first n_ff rows, as ggml_swiglu splits it */
                L->gate = mat_rows(&L->up, 0, hp->n_ff);
                L->up = mat_rows(&L->up, hp->n_ff, hp->n_ff);
                L->up.id = -1;  /* one product in llama.cpp: its input counted once, with the gate's half */
            }
            if (hp->ffn != TK_FFN_GELU) NEED_MAT(gate, "ffn_gate.weight", hp->n_ff, d);
            NEED_MAT(up, "ffn_up.weight", hp->n_ff, d);
            NEED_MAT(down, "ffn_down.weight", d, hp->n_ff);
        }
        if (hp->norm == TK_NORM_LAYER) {
            NEED_VEC(attn_norm_b, "attn_norm.bias");
            NEED_VEC(ffn_norm_b, "ffn_norm.bias");
        }
#undef NEED_MAT
#undef NEED_VEC
    }
    if (hp->norm == TK_NORM_LAYER && !e->out_norm_b) { snprintf(err, errlen, "missing tensor output_norm.bias"); goto fail; }
    e->rope_theta_scale = hp->n_rot ? powf(hp->rope_base, -2.0f / (float)hp->n_rot) : 1.0f;
    e->rope_theta_scale_swa = hp->n_rot ? powf(hp->rope_base_swa, -2.0f / (float)hp->n_rot) : 1.0f;
    return e;
fail:
    tk_engine_free(e);
    return NULL;
}

int64_t tk_engine_vocab(const struct tk_engine *e) { return e->hp.n_vocab; }

void tk_engine_set_stats(struct tk_engine *e, struct tk_act_stats *stats) { e->stats = stats; }
int64_t tk_engine_embd(const struct tk_engine *e) { return e->hp.n_embd; }

/* ------------------------------------------------------------------------------------------------ KV cache */

/* a cache element type for heads of hd elements: F32, F16, or Q8_0 / Q4_0 blocks that tile a head */
static int kv_type_ok(int type, int64_t hd) {
    return type == TK_F32 || type == TK_F16 || ((type == TK_Q8_0 || type == TK_Q4_0) && hd % QK == 0);
}

struct tk_kv *tk_kv_new(const struct tk_engine *e, int64_t n_ctx, int type_k, int type_v) {
    if (n_ctx <= 0 || !kv_type_ok(type_k, e->hp.head_dim) || !kv_type_ok(type_v, e->hp.head_dim)) return NULL;
    struct tk_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->type_k = type_k;
    kv->type_v = type_v;
    kv->n_ctx = n_ctx;
    kv->n_layer = e->hp.n_layer;
    kv->kv_dim = e->hp.n_head_kv * e->hp.head_dim;
    kv->row_k = tk_row_size(type_k, kv->kv_dim);
    kv->row_v = tk_row_size(type_v, kv->kv_dim);
    size_t rows, bytes_k, bytes_v;  /* n_layer x n_ctx rows, every product checked (n_ctx comes from the user) */
    if (__builtin_mul_overflow((size_t)kv->n_layer, (size_t)n_ctx, &rows) ||
        __builtin_mul_overflow(rows, kv->row_k, &bytes_k) || __builtin_mul_overflow(rows, kv->row_v, &bytes_v) ||
        bytes_k > (size_t)PTRDIFF_MAX || bytes_v > (size_t)PTRDIFF_MAX) {
        free(kv);
        return NULL;
    }
    kv->k = calloc(1, bytes_k);
    kv->v = calloc(1, bytes_v);
    if (!kv->k || !kv->v) { tk_kv_free(kv); return NULL; }
    return kv;
}

void tk_kv_free(struct tk_kv *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv);
}

int64_t tk_kv_size(const struct tk_kv *kv) { return kv->n_ctx; }

/* ------------------------------------------------------------------------------------------------ float kernels */

/* exp as ggml's vectorised expf computes it (the Arm optimized-routines algorithm: 2^n · poly(b), max error
   ~1.5 ulp), lane by lane; the AVX2 version below gives the same bits. */
static inline float bits2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f2bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static float exp_lane(float x) {
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = f2bits(z) << 23;
    const float k = bits2f(e + f2bits(1.0f));
    const int c = fabsf(n) > 126.0f;
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, 0x1.ffffecp-1f * b);
    if (!c) return fmaf(j, k, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = bits2f(g + 0x7f000000u), s2 = bits2f(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

/* sum of 8 lanes in the order of ggml's/tinyBLAS's horizontal add: ((0+4)+(2+6)) + ((1+5)+(3+7)) */
static inline float hsum_lanes(const float a[8]) {
    const float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

/* ggml's F32 dot product (ggml_vec_dot_f32 on AVX2): 4 accumulators of 8 lanes, element i in accumulator
   (i mod 32) / 8, lane i mod 8, added with FMA over steps of 32; the 32 partial sums reduced as its REDUCE macro
   does; leftover elements added in float. */
static inline float reduce32(const float a[32]) {
    float t[8], u[4];
    for (int l = 0; l < 8; l++) t[l] = (a[l] + a[16 + l]) + (a[8 + l] + a[24 + l]);
    for (int l = 0; l < 4; l++) u[l] = t[l] + t[l + 4];
    return (u[0] + u[1]) + (u[2] + u[3]);
}

static float dot_ggml(const float *x, const void *y, int y_f16, int64_t n) {
    float acc[32] = {0};
    const int64_t np = n & ~(int64_t)31;
    for (int64_t i = 0; i < np; i += 32)
        for (int k = 0; k < 32; k++)
            acc[k] = fmaf(x[i + k], y_f16 ? tk_fp16_table[((const uint16_t *)y)[i + k]] : ((const float *)y)[i + k],
                          acc[k]);
    float s = reduce32(acc);
    for (int64_t i = np; i < n; i++) s += x[i] * (y_f16 ? tk_fp16_table[((const uint16_t *)y)[i]] : ((const float *)y)[i]);
    return s;
}

/* one query of attend_group (below) */
struct att_query {
    const float *q;   /* the query (head_dim floats) */
    float *out;       /* its output (head_dim floats) */
    float *s;         /* scores: T rounded up to 32 floats */
    float *acc;       /* p·v's 32 partial sums: 32 × head_dim floats */
    char *qq;         /* q converted to a quantized cache's vec_dot type */
    float mx;
};

#ifdef TK_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float hsum256(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

AVX2 static inline __m256 exp256(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.f), n);
    const __m256 c = _mm256_cmp_ps(absn, _mm256_set1_ps(126), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(c)) return _mm256_fmadd_ps(j, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 d = _mm256_cmp_ps(absn, _mm256_set1_ps(192), _CMP_GT_OQ);
    return _mm256_or_ps(_mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
                        _mm256_andnot_ps(d, _mm256_or_ps(_mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                                                         _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)))));
}

AVX2 static inline __m256 load8(const void *y, int y_f16, int64_t i) {
    return y_f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)y + i)))
                 : _mm256_loadu_ps((const float *)y + i);
}

AVX2 static float dot_ggml_avx2(const float *x, const void *y, int y_f16, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t np = n & ~(int64_t)31;
    for (int64_t i = 0; i < np; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8(y, y_f16, i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), load8(y, y_f16, i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), load8(y, y_f16, i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), load8(y, y_f16, i + 24), a3);
    }
    a0 = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
    const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    const __m128 t1 = _mm_hadd_ps(t0, t0);
    float s = _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
    for (int64_t i = np; i < n; i++) s += x[i] * (y_f16 ? tk_fp16_table[((const uint16_t *)y)[i]] : ((const float *)y)[i]);
    return s;
}

/* s[j] = exp(s[j] - mx) for j < Tp (a multiple of 8); returns the sum in llama.cpp's order */
AVX2 static double softmax_exp_avx2(float *s, int64_t Tp, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    double sum = 0;
    for (int64_t j = 0; j < Tp; j += 8) {
        __m256 v = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(s + j, v);
        sum += (double)hsum256(v);
    }
    return sum;
}

/* a[d] = fma(v[d], p, a[d]) for d < hd (a multiple of 8); v F32 or F16 */
AVX2 static void axpy_avx2(float *a, float p, const void *v, int64_t hd, int f16) {
    const __m256 pv = _mm256_set1_ps(p);
    for (int64_t d = 0; d < hd; d += 8)
        _mm256_storeu_ps(a + d, _mm256_fmadd_ps(load8(v, f16, d), pv, _mm256_loadu_ps(a + d)));
}

/* s[j] = (q · k_j) · scale for j in [j0, j1), k_j a row of the cache (F32 or F16), each dot as dot_ggml_avx2 */
AVX2 static void scores_avx2(float *s, const float *q, const char *kbase, size_t row_k, int f16, int64_t j0,
                             int64_t j1, int64_t hd, float scale) {
    for (int64_t j = j0; j < j1; j++) s[j] = dot_ggml_avx2(q, kbase + (size_t)j * row_k, f16, hd) * scale;
}

/* acc[(j mod 32) · hd + d] += p_j · v_j[d] for j in [j0, j1) (FMA), v_j a row of the cache (F32 or F16) or of a block
   of dequantized rows */
AVX2 static void pv_avx2(float *acc, const float *p, const char *vbase, size_t row_v, int f16, int64_t j0, int64_t j1,
                         int64_t hd) {
    for (int64_t j = j0; j < j1; j++) axpy_avx2(acc + (j & 31) * hd, p[j], vbase + (size_t)(j - j0) * row_v, hd, f16);
}

/* The same kernels with 512-bit registers (a lane's operations unchanged, so the same bits): dot_ggml_avx2's four
   accumulators as two (elements 0-15 and 16-31 of each step of 32), reduced as it reduces them */
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw")))

/* rows j0..j1 of an F16 cache converted to F32 into dst (hd floats per row) */
AVX512 static void f16_rows_avx512(float *dst, const char *rows, size_t row, int64_t n, int64_t hd) {
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *h = (const uint16_t *)(rows + (size_t)j * row);
        float *o = dst + j * hd;
        int64_t d = 0;
        for (; d + 16 <= hd; d += 16) _mm512_storeu_ps(o + d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + d))));
        for (; d < hd; d++) o[d] = tk_fp16_table[h[d]];
    }
}

/* dot_ggml_avx2(q, k, hd)'s four accumulators for hd a multiple of 32, as one register: elements 0-7 a0 + a2, 8-15
   a1 + a3 (its first addition) */
AVX512 static inline __m512 dot_halves_avx512(const float *q, const float *k, int64_t hd) {
    __m512 a01 = _mm512_setzero_ps(), a23 = a01;
    for (int64_t d = 0; d < hd; d += 32) {
        a01 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), a01);
        a23 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16), _mm512_loadu_ps(k + d + 16), a23);
    }
    return _mm512_add_ps(a01, a23);
}

/* dot_ggml_avx2's reduction of sixteen dot_halves_avx512 results at once, the sum of t[p] in lane p: a transposing
   tree whose every addition is one of the reduction's (elements 0-7 + 8-15, then the 128-bit halves, then the two
   hadds), so each lane's sum has the one-pair bits with about two shuffles per pair instead of six */
AVX512 static inline __m512 reduce16_avx512(const __m512 t[16]) {
    __m512 u[8], w[4], z[2];
    for (int m = 0; m < 8; m++)  /* [t2m's 8-lane sum | t2m+1's] */
        u[m] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * m], t[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(t[2 * m], t[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int m = 0; m < 4; m++)  /* 128-bit lane l: pair 4m + l's four-lane sum */
        w[m] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int m = 0; m < 2; m++)  /* lane l: the first hadd of pairs 8m + l and 8m + 4 + l */
        z[m] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * m], w[2 * m + 1], 0x88), _mm512_shuffle_ps(w[2 * m], w[2 * m + 1], 0xDD));
    const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
    /* element 4l + c of s holds pair l + 4c */
    return _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), s);
}

/* one (query, position) pair's score as dot_ggml_avx2 gives it, times scale */
AVX512 static float score_avx512(const float *q, const float *k, int64_t hd, float scale) {
    const int64_t np = hd & ~(int64_t)31;
    const __m512 t = dot_halves_avx512(q, k, np);
    const __m256 u = _mm256_add_ps(_mm512_castps512_ps256(t), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1)));
    const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
    const __m128 t1 = _mm_hadd_ps(t0, t0);
    float sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
    for (int64_t d = np; d < hd; d++) sum += q[d] * k[d];
    return sum * scale;
}

/* the dot_halves_avx512 of NQ queries (1 or 2) with 16 / NQ consecutive rows of k, for hd = HD (a multiple of 32, a
   constant where it is inlined, so that the queries stay in registers): query i's with row p in t[i · 16 / NQ + p] */
AVX512 static inline __attribute__((always_inline)) void dot_tile_avx512(__m512 t[16], const float *const q[2], int NQ,
                                                                         const char *rows, size_t row, int64_t HD) {
    __m512 qv[2][16];
#pragma GCC unroll 2
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 16
        for (int64_t d = 0; d < HD / 16; d++) qv[i][d] = _mm512_loadu_ps(q[i] + 16 * d);
#pragma GCC unroll 16
    for (int p = 0; p < 16 / NQ; p++) {
        const float *k = (const float *)(rows + (size_t)p * row);
#pragma GCC unroll 2
        for (int i = 0; i < NQ; i++) {
            __m512 a01 = _mm512_setzero_ps(), a23 = a01;
#pragma GCC unroll 8
            for (int64_t d = 0; d < HD / 32; d++) {
                a01 = _mm512_fmadd_ps(qv[i][2 * d], _mm512_loadu_ps(k + 32 * d), a01);
                a23 = _mm512_fmadd_ps(qv[i][2 * d + 1], _mm512_loadu_ps(k + 32 * d + 16), a23);
            }
            t[i * 16 / NQ + p] = _mm512_add_ps(a01, a23);
        }
    }
}

/* s[j] = (q · k_j) · scale for j in [j0, j1) and every query of a group, k_j F32 rows (F16 ones converted once for the
   block into kf: ATT_BLOCK × hd floats), each read once for a pair of queries: for hd 64 (two queries × 8 positions,
   or one × 16 for a query without a partner) and 128 (one × 16), the sixteen pairs reduced together; the rest a pair
   at a time */
AVX512 static void scores_group_avx512(struct att_query *g, int G, const char *kbase, size_t row_k, int f16,
                                       int64_t j0, int64_t j1, int64_t hd, float scale, float *kf) {
    const char *rows = kbase + (size_t)j0 * row_k;
    size_t row = row_k;
    if (f16) {
        f16_rows_avx512(kf, rows, row_k, j1 - j0, hd);
        rows = (const char *)kf, row = sizeof(float) * (size_t)hd;
    }
#define KROW(j) (rows + (size_t)((j) - j0) * row)
    const __m512 sc = _mm512_set1_ps(scale);
    const int NQ = hd == 64 ? 2 : 1;
    for (int i = 0; i < G; i += NQ) {
        const int nq = i + NQ <= G ? NQ : 1, per = 16 / nq;
        const float *const q[2] = {g[i].q, g[i + nq - 1].q};
        int64_t j = j0;
        if (hd == 64 || hd == 128)
            for (; j + per <= j1; j += per) {
                __m512 t[16];
                if (nq == 2) dot_tile_avx512(t, q, 2, KROW(j), row, 64);
                else if (hd == 64) dot_tile_avx512(t, q, 1, KROW(j), row, 64);
                else dot_tile_avx512(t, q, 1, KROW(j), row, 128);
                const __m512 s = _mm512_mul_ps(reduce16_avx512(t), sc);
                if (nq == 2) {
                    _mm256_storeu_ps(g[i].s + j, _mm512_castps512_ps256(s));
                    _mm256_storeu_ps(g[i + 1].s + j, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
                } else {
                    _mm512_storeu_ps(g[i].s + j, s);
                }
            }
        for (; j < j1; j++)
            for (int a = 0; a < nq; a++) g[i + a].s[j] = score_avx512(q[a], (const float *)KROW(j), hd, scale);
    }
#undef KROW
}

/* pv_avx2 for NQ queries on 512-bit registers (one slot's partial sums of each in registers while the positions of that
   slot pass, so the same FMAs in the same order per slot), over elements d0 .. d0 + 16 · ND of each row; NQ, ND and F16
   constants where it is inlined */
AVX512 static inline __attribute__((always_inline)) void pv_tile_avx512(struct att_query *g, int NQ, int ND,
                                                                        const char *rows, size_t row, int F16,
                                                                        int64_t j0, int64_t j1, int64_t d0, int64_t hd) {
    for (int k = 0; k < 32; k++) {
        int64_t j = j0 + ((k - j0) & 31);  /* the block's first position in slot k */
        if (j >= j1) continue;
        __m512 a[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
            for (int c = 0; c < ND; c++) a[i][c] = _mm512_loadu_ps(g[i].acc + k * hd + d0 + 16 * c);
        for (; j < j1; j += 32) {
            const char *v = rows + (size_t)(j - j0) * row;
            __m512 vv[4];
#pragma GCC unroll 4
            for (int c = 0; c < ND; c++)
                vv[c] = F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)v + d0 + 16 * c)))
                            : _mm512_loadu_ps((const float *)v + d0 + 16 * c);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                const __m512 p = _mm512_set1_ps(g[i].s[j]);
#pragma GCC unroll 4
                for (int c = 0; c < ND; c++) a[i][c] = _mm512_fmadd_ps(vv[c], p, a[i][c]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
            for (int c = 0; c < ND; c++) _mm512_storeu_ps(g[i].acc + k * hd + d0 + 16 * c, a[i][c]);
    }
}

/* pv_avx2 for every query of a group over value rows j0 .. j1 (F32, or F16 converted as they are read), four
   queries at a time, 64 elements of a row at a time (hd a multiple of 16; else a query at a time, over F32 rows) */
AVX512 static void pv_group_avx512(struct att_query *g, int G, const char *rows, size_t row, int f16, int64_t j0,
                                   int64_t j1, int64_t hd) {
    for (int i = 0; i < G;) {
        const int nq = hd % 16 ? 0 : i + 4 <= G ? 4 : 1;
        if (!nq) {
            pv_avx2(g[i].acc, g[i].s, rows, row, f16, j0, j1, hd);
            i++;
            continue;
        }
        for (int64_t d0 = 0; d0 < hd;) {
            const int64_t left = hd - d0;
            const int nd = left >= 64 ? 4 : left >= 32 ? 2 : 1;
#define PV_TILE(NQ, ND) (f16 ? pv_tile_avx512(g + i, NQ, ND, rows, row, 1, j0, j1, d0, hd) \
                             : pv_tile_avx512(g + i, NQ, ND, rows, row, 0, j0, j1, d0, hd))
            if (nq == 4) nd == 4 ? PV_TILE(4, 4) : nd == 2 ? PV_TILE(4, 2) : PV_TILE(4, 1);
            else nd == 4 ? PV_TILE(1, 4) : nd == 2 ? PV_TILE(1, 2) : PV_TILE(1, 1);
#undef PV_TILE
            d0 += 16 * nd;
        }
        i += nq;
    }
}

/* out[d] = reduce32 of acc[k · hd + d] over k, eight d at a time (the same additions, lane by lane) */
AVX2 static void reduce32_rows_avx2(float *out, const float *acc, int64_t hd) {
    for (int64_t d = 0; d < hd; d += 8) {
        __m256 t[8];
        for (int l = 0; l < 8; l++)
            t[l] = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(acc + l * hd + d), _mm256_loadu_ps(acc + (16 + l) * hd + d)),
                                 _mm256_add_ps(_mm256_loadu_ps(acc + (8 + l) * hd + d), _mm256_loadu_ps(acc + (24 + l) * hd + d)));
        for (int l = 0; l < 4; l++) t[l] = _mm256_add_ps(t[l], t[l + 4]);
        _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3])));
    }
}
#endif

/* ------------------------------------------------------------------------------------------------ attention */

/* s[0..T) ← softmax(s) with s's maximum mx, as ggml_soft_max computes it (exp lane by lane, the sum in double over
   8-lane groups, then one scale by the float reciprocal); s has room for T rounded up to 8 */
static void softmax(float *s, int64_t T, float mx, int simd) {
    const int64_t Tp = (T + 7) & ~(int64_t)7;
    for (int64_t j = T; j < Tp; j++) s[j] = -INFINITY;
    double sum = 0;
#ifdef TK_X86
    if (simd) sum = softmax_exp_avx2(s, Tp, mx);
    else
#endif
    {
        for (int64_t j = 0; j < Tp; j += 8) {
            for (int l = 0; l < 8; l++) s[j + l] = exp_lane(s[j + l] - mx);
            sum += (double)hsum_lanes(s + j);
        }
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < T; j++) s[j] *= inv;
}

/* The query heads that share a kv head, for one token: softmax(q·k · scale) · v of each (the scores soft-capped first
   when softcap > 0) against positions first..T-1, in the order of llama.cpp's one-token path (q·k and p·v as
   ggml_vec_dot_f32; the positions of p·v padded with zeros to whole steps). A quantized cache (Q8_0, Q4_0) is read as
   llama.cpp's CPU flash attention reads it: q·k as the type's vec_dot with q converted to its vec_dot type, v rows
   dequantized to f32. Each query's arithmetic is that of a query alone; the positions are visited in blocks of
   ATT_BLOCK whose key and value rows stay in L1 while every query of the group meets them (a long prompt otherwise
   reads the whole cache from L2 once per query head). */
#define ATT_GROUP 8    /* query heads per group at most (more heads on one kv head: several groups) */
#define ATT_BLOCK 64   /* cache positions per block */

/* per-thread scratch (floats) of a group: its queries' scores, partial sums and converted q, and a block of
   dequantized value rows */
static int64_t att_scratch(int64_t max_ctx, int64_t hd) {
    return ATT_GROUP * (max_ctx + 32 + 32 * hd + hd + 16) + ATT_BLOCK * hd + 16;
}

static void att_queries(struct att_query *g, int G, float *scratch, int64_t max_ctx, int64_t hd) {
    float *p = scratch;
    for (int i = 0; i < G; i++) {
        g[i].s = p; p += max_ctx + 32;
        g[i].acc = p; p += 32 * hd;
        g[i].qq = (char *)p; p += hd + 16;
    }
}

static void attend_group(struct att_query *g, int G, const struct tk_kv *kv, int64_t layer, int64_t kvh, int64_t hd,
                         int64_t first, int64_t T, float scale, float softcap, float *vblock, int simd) {
    const int tk = kv->type_k, tv = kv->type_v;
    const char *kbase = (const char *)kv->k + (size_t)(layer * kv->n_ctx) * kv->row_k + tk_row_size(tk, kvh * hd);
    const char *vbase = (const char *)kv->v + (size_t)(layer * kv->n_ctx) * kv->row_v + tk_row_size(tv, kvh * hd);
    const int k_float = tk == TK_F32 || tk == TK_F16, v_float = tv == TK_F32 || tv == TK_F16;
    tk_vec_dot_fn kdot = k_float ? NULL : tk_vec_dot(tk);
    for (int i = 0; i < G; i++) {
        if (!k_float) tk_convert_activation_row(tk_dot_traits(tk)->vec_dot_type, g[i].q, g[i].qq, hd);
        g[i].mx = -INFINITY;
        for (int64_t j = 0; j < first; j++) g[i].s[j] = -INFINITY;  /* outside a sliding window: masked, as llama.cpp does */
    }
    for (int64_t j0 = first; j0 < T; j0 += ATT_BLOCK) {
        const int64_t j1 = j0 + ATT_BLOCK < T ? j0 + ATT_BLOCK : T;
        int scored = 0;  /* the block's scores of every query computed at once (each key row read once) */
#ifdef TK_X86
        if (simd >= 2 && !kdot) {
            scores_group_avx512(g, G, kbase, kv->row_k, tk == TK_F16, j0, j1, hd, scale, vblock);
            scored = 1;
        }
#endif
        for (int i = 0; i < G; i++) {
            float *s = g[i].s, mx = g[i].mx;
#ifdef TK_X86
            if (!scored && simd && !kdot) scores_avx2(s, g[i].q, kbase, kv->row_k, tk == TK_F16, j0, j1, hd, scale);
            else
#endif
                for (int64_t j = j0; j < j1 && !scored; j++) {
                    const void *kj = kbase + (size_t)j * kv->row_k;
                    float d;
                    if (kdot) kdot(hd, &d, kj, g[i].qq);
                    else d = dot_ggml(g[i].q, kj, tk == TK_F16, hd);
                    s[j] = d * scale;
                }
            for (int64_t j = j0; j < j1; j++) {
                if (softcap > 0) s[j] = softcap * tanhf(s[j] * (1.0f / softcap));  /* Gemma 2, as llama.cpp caps kq */
                mx = s[j] > mx ? s[j] : mx;
            }
            g[i].mx = mx;
        }
    }
    for (int i = 0; i < G; i++) {
        softmax(g[i].s, T, g[i].mx, simd);
        memset(g[i].acc, 0, sizeof(float) * 32 * (size_t)hd);
    }
    /* out[d] = Σ_j p_j v_j[d]: position j in partial sum j mod 32, accumulated with FMA, then reduced */
    const int f16 = v_float && tv == TK_F16;
    for (int64_t j0 = first; j0 < T; j0 += ATT_BLOCK) {
        const int64_t j1 = j0 + ATT_BLOCK < T ? j0 + ATT_BLOCK : T;
        if (!v_float)  /* the block's value rows dequantized once for the group */
            for (int64_t j = j0; j < j1; j++)
                tk_traits(tv)->dequantize_row(vbase + (size_t)j * kv->row_v, vblock + (j - j0) * hd, hd);
        const char *rows = v_float ? vbase + (size_t)j0 * kv->row_v : (const char *)vblock;
        size_t row = v_float ? kv->row_v : sizeof(float) * (size_t)hd;
        int rows_f16 = f16;
#ifdef TK_X86
        if (simd >= 2 && v_float) {  /* F32 or F16 rows: the whole range at once, each row converted where it is read */
            pv_group_avx512(g, G, vbase + (size_t)first * kv->row_v, kv->row_v, f16, first, T, hd);
            break;
        }
        if (simd >= 2) {
            pv_group_avx512(g, G, rows, row, 0, j0, j1, hd);
            continue;
        }
#endif
        for (int i = 0; i < G; i++) {
#ifdef TK_X86
            if (simd) { pv_avx2(g[i].acc, g[i].s, rows, row, rows_f16, j0, j1, hd); continue; }
#endif
            for (int64_t j = j0; j < j1; j++) {
                float *a = g[i].acc + (j & 31) * hd;
                const float p = g[i].s[j];
                const char *vj = rows + (size_t)(j - j0) * row;
                for (int64_t d = 0; d < hd; d++) {
                    const float x = rows_f16 ? tk_fp16_table[((const uint16_t *)vj)[d]] : ((const float *)vj)[d];
                    a[d] = fmaf(x, p, a[d]);
                }
            }
        }
    }
    for (int i = 0; i < G; i++) {
#ifdef TK_X86
        if (simd) { reduce32_rows_avx2(g[i].out, g[i].acc, hd); continue; }
#endif
        for (int64_t d = 0; d < hd; d++) {
            float l32[32];
            for (int k = 0; k < 32; k++) l32[k] = g[i].acc[k * hd + d];
            g[i].out[d] = reduce32(l32);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ element-wise */

static void swiglu_lanes(float *y, const float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + exp_lane(-g[i])) * u[i];
}

#ifdef TK_X86
AVX2 static void swiglu_avx2(float *y, const float *g, const float *u, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
        const __m256 s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    swiglu_lanes(y + i, g + i, u + i, n - i);
}
#endif

/* GELU (tanh form) in float, as transformers computes it; or, with tk_set_gelu_fp16(1), as ggml's CPU backend
   does: the input rounded to fp16 and the result read from a table of fp16 values (0 below -10, x above 10). The
   table form exists to show that, GELU aside, the engine computes what llama.cpp computes (tests/test_runtime.py).
   The float form is evaluated as x·σ(2u) = x / (1 + exp(-2u)), u = √(2/π)·x·(1 + 0.044715x²), with the vectorised
   exp of SiLU and softmax (within ~2 ulp of 0.5x(1 + tanh u), which libm's tanhf took 12% of a GELU model's prompt
   time to give): gelu_lane lane by lane, gelu_avx2 the same bits eight at a time. */
static int gelu_fp16;

void tk_set_gelu_fp16(int on) { gelu_fp16 = on != 0; }

static inline float gelu_exact(float x) {
    const float c = 0.7978845608028654f, a = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(c * x * (1.0f + a * x * x)));
}

static inline float gelu_lane(float x) {
    const float p = fmaf(0.044715f * x, x, 1.0f);
    return x / (1.0f + exp_lane(x * -1.5957691216057308f * p));
}

#ifdef TK_X86
AVX2 static void gelu_avx2(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 p = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v), v, _mm256_set1_ps(1.0f));
        const __m256 e = exp256(_mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(-1.5957691216057308f)), p));
        _mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
    }
    for (; i < n; i++) y[i] = gelu_lane(x[i]);
}
#endif

static void gelu_row(float *y, const float *x, int64_t n, int simd) {
    if (!gelu_fp16) {
#ifdef TK_X86
        if (simd) { gelu_avx2(y, x, n); return; }
#endif
        (void)simd;
        for (int64_t i = 0; i < n; i++) y[i] = gelu_lane(x[i]);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        tk_half h;
        if (x[i] <= -10.0f || x[i] >= 10.0f) {
            y[i] = x[i] <= -10.0f ? 0.0f : x[i];
            continue;
        }
        tk_convert(&x[i], TK_F32, &h, TK_F16, 1, 1);
        const float g = gelu_exact(tk_fp16_table[h]);
        tk_convert(&g, TK_F32, &h, TK_F16, 1, 1);
        y[i] = tk_fp16_table[h];
    }
}

/* ------------------------------------------------------------------------------------------------ the pass */

#define MAX_ACT 4

/* the forward pass's threads at most (tk_engine_forward_batch) */
#define ENGINE_MAX_THREADS 64

struct fwd {
    struct tk_engine *e;
    const struct tk_seq *seqs;
    int nseq, simd;
    /* the batch's tokens, every sequence's one after the other: token t is id tok[t] at position pos[t] of sequence
       seq[t]; the output norm runs on tokens out_tok[0..nnorm) into rows 0..nnorm of h, the first nout of them those
       whose logits are wanted (written to out, n_vocab floats per row), the others those whose hidden states are */
    int64_t n, nout, nnorm, max_ctx;
    const int32_t *tok, *seq;
    const int64_t *pos, *out_tok;
    float *out;
    const float **rope_ff;   /* per sequence: the rope frequency factors of its cache's context (NULL: none) */
    struct tk_barrier bar;
    atomic_llong taken[2][ENGINE_MAX_THREADS]; /* per thread, the chunks taken from its share of a matmul step (matmuls) */
    float *x, *h, *q, *k, *v, *att, *f1, *f2, *scratch;
    int64_t scratch_per_thread;
    /* mixture of experts: router logits [n][n_expert]; each token's experts and weights [n][n_expert_used]; the
       (token, expert) pairs grouped by expert: pairs of expert e are rows estart[e]..estart[e+1] of xe (their
       inputs), e1/e2 (gate, up) and ye (outputs); pair_row[t*k + j] is the row of token t's j-th expert,
       row_token[r] the token of row r */
    float *router, *wgt, *xe, *e1, *e2, *ye;
    int32_t *sel, *pair_row, *row_token;
    int64_t *estart;
    char *act_buf[MAX_ACT];  /* activations converted for the next products, one buffer per vec_dot type */
    size_t act_cap;
    char *work;              /* tk_matmul_rows' work memory, work_size bytes per thread */
    size_t work_size;
};

/* The activations of the next products: source rows and the vec_dot types they are converted to (every thread
   computes the same plan). */
struct acts { const float *src; int64_t cols; int type[MAX_ACT], n; size_t row[MAX_ACT]; };

/* One product: y[j][r] (+)= W[r] · act[t0 + j] (+ bias[r]) for j < n tokens. */
struct mm { const struct tk_mat *w; const float *bias; float *y; int64_t ldy; int add; int64_t n; int64_t t0; };

static void split_range(int64_t total, int i, int n, int64_t *a, int64_t *b) {
    int64_t per = total / n, extra = total % n;
    *a = per * i + (i < extra ? i : extra);
    *b = *a + per + (i < extra);
}

/* Work items of a row-wise step: with fewer rows than threads, every row is cut into nth segments aligned to
   `align` elements, so all threads work. Calls fn(f, row, e0, e1). */
static int64_t act_align(const struct acts *A);

typedef void (*row_fn)(struct fwd *f, const struct acts *A, int64_t row, int64_t e0, int64_t e1, void *ctx);

static void for_rows(struct fwd *f, const struct acts *A, int64_t nrows, int64_t len, int ith, int nth, row_fn fn,
                     void *ctx) {
    const int64_t align = act_align(A);
    if (nrows >= nth || len <= align) {
        int64_t a, b;
        split_range(nrows, ith, nth, &a, &b);
        for (int64_t r = a; r < b; r++) fn(f, A, r, 0, len, ctx);
        return;
    }
    const int64_t units = len / align;
    for (int64_t r = 0; r < nrows; r++) {
        int64_t a, b;
        split_range(units, ith, nth, &a, &b);
        if (a < b) fn(f, A, r, a * align, b == units ? len : b * align, ctx);
    }
}

/* Which vec_dot types the next products need (their activations are converted once per type). */
static struct acts plan_acts(const float *src, int64_t cols, const struct mm *g, int ng) {
    struct acts A = {src, cols, {0}, 0, {0}};
    for (int i = 0; i < ng; i++) {
        int t = tk_act_type(g[i].w->type, g[i].n, g[i].w->cols), seen = 0;
        for (int j = 0; j < A.n; j++) seen |= A.type[j] == t;
        if (!seen) {
            if (A.n == MAX_ACT) abort();  /* every weight type needs at most two activation types */
            A.type[A.n] = t;
            A.row[A.n] = tk_row_size(t, cols);
            A.n++;
        }
    }
    return A;
}

/* segments of a row are cut at whole blocks of every type */
static int64_t act_align(const struct acts *A) {
    int64_t a = 32;
    for (int j = 0; j < A->n; j++) {
        const int64_t b = tk_traits(A->type[j])->block_size;
        if (b > a) a = b;
    }
    return a;
}

/* convert elements [e0, e1) of activation row r to every planned type */
static void convert_acts(struct fwd *f, const struct acts *A, int64_t r, int64_t e0, int64_t e1) {
    const float *x = A->src + r * A->cols + e0;
    for (int j = 0; j < A->n; j++) {
        const int t = A->type[j];
        if (t == TK_F32) continue;
        char *dst = f->act_buf[j] + (size_t)r * A->row[j] + tk_row_size(t, e0);
        tk_convert_activation_row(t, x, dst, e1 - e0);
    }
}

static const char *act_for(const struct fwd *f, const struct acts *A, int type, size_t *row) {
    for (int j = 0; j < A->n; j++) {
        if (A->type[j] != type) continue;
        if (type == TK_F32) { *row = (size_t)A->cols * 4; return (const char *)A->src; }
        *row = A->row[j];
        return f->act_buf[j];
    }
    return NULL;
}

/* y rows [r0, r1) of one product, all tokens */
static void mm_rows(const struct fwd *f, const struct acts *A, const struct mm *m, int64_t r0, int64_t r1, int ith) {
    size_t arow = 0;
    const char *act = act_for(f, A, tk_act_type(m->w->type, m->n, m->w->cols), &arow);
    tk_matmul_rows(m->w->type, m->w->data, m->w->cols, r0, r1, act + (size_t)m->t0 * arow, arow, m->n, m->y, m->ldy,
                   m->bias, m->add, f->work + (size_t)ith * f->work_size);
}

/* llama-imatrix's statistics of the activations entering the products of a group (thread 0, before its share of
   the products: the activations are ready, the others start on the products) */
static void collect_stats(const struct fwd *f, const struct acts *A, const struct mm *g, int ng) {
    const struct tk_act_stats *st = f->e->stats;
    for (int i = 0; i < ng; i++) {
        const struct tk_mat *w = g[i].w;
        if (w->id < 0 || w->id >= st->n || !st->sum2[w->id]) continue;
        if (w->expert < 0 && f->n < 16) continue;  /* llama-imatrix leaves out products of fewer than 16 tokens */
        const int64_t off = (w->expert < 0 ? 0 : w->expert) * A->cols;
        float *sum2 = st->sum2[w->id] + off, *sum = st->sum[w->id] + off;
        for (int64_t t = g[i].t0; t < g[i].t0 + g[i].n; t++) {
            const float *x = A->src + t * A->cols;
            for (int64_t j = 0; j < A->cols; j++) {
                sum2[j] += x[j] * x[j];
                sum[j] += x[j];
            }
        }
        st->count[w->id][w->expert < 0 ? 0 : w->expert] += g[i].n;
    }
}

/* One chunk of [lo, hi), a thread's share of a matmul step: its word counts the chunks taken from the front (low 32
   bits, by the owner) and from the back (high 32 bits, by the others once their own shares are done); -1 when none
   is left. */
static int64_t take_chunk(atomic_llong *word, int64_t lo, int64_t hi, int from_back) {
    long long v = atomic_load_explicit(word, memory_order_relaxed);
    for (;;) {
        const int64_t front = v & 0xFFFFFFFF, back = (int64_t)((unsigned long long)v >> 32);
        if (lo + front + back >= hi) return -1;
        if (atomic_compare_exchange_weak(word, &v, from_back ? v + (1LL << 32) : v + 1))
            return from_back ? hi - 1 - back : lo + front;
    }
}

static int64_t lcm(int64_t a, int64_t b) {
    int64_t x = a, y = b;
    while (y) {
        const int64_t r = x % y;
        x = y;
        y = r;
    }
    return a / x * b;
}

/* The products of a group, their rows in chunks of a multiple of every product's tile rows and of 2 (tiles and the
   two-row kernels' pairs stay whole: F16's tiles of 5 rows in chunks of 128 rows computed 2 zero rows per chunk of
   TinyLlama's o and down products), some 8 per thread. Each thread owns a run of consecutive chunks and takes them from
   the front, so that its rows are one stream from memory (the kernels fetch rows ahead of the one they compute, past
   the chunk's end too; a chunk that starts a new stream waits for its first rows); a thread done with its own takes
   the others' last ones, so that a thread the machine slows down holds the others at the next barrier for one chunk
   at most. Chunks handed out one after another to whichever thread asked, before: TinyLlama-shaped Q4_0 generation 5%
   slower. Matmul step k counts on
   taken[k % 2], which thread 0 clears for step k + 1 once every thread is past step k - 1 (a barrier follows every
   step). */
static void matmuls(struct fwd *f, const struct acts *A, const struct mm *g, int ng, int ith, int nth, int *step) {
    if (ith == 0 && f->e->stats) collect_stats(f, A, g, ng);
    atomic_llong *taken = f->taken[*step & 1];
    if (ith == 0)
        for (int t = 0; t < nth; t++) atomic_store(&f->taken[(*step + 1) & 1][t], 0);
    (*step)++;
    int64_t unit = 2, units = 0;
    for (int i = 0; i < ng; i++) unit = lcm(unit, tk_matmul_tile_rows(g[i].w->type, g[i].n, g[i].w->cols));
    for (int i = 0; i < ng; i++) units += (g[i].w->rows + unit - 1) / unit;
    const int64_t per = (units + 8 * nth - 1) / (8 * nth), rows = unit * per;
    int64_t chunks[ng], total = 0;
    for (int i = 0; i < ng; i++) total += chunks[i] = (g[i].w->rows + rows - 1) / rows;
    for (int k = 0; k < nth; k++) {
        const int t = (ith + k) % nth;
        const int64_t lo = total * t / nth, hi = total * (t + 1) / nth;
        for (int64_t c; (c = take_chunk(&taken[t], lo, hi, k > 0)) >= 0;) {
            int i = 0;
            while (c >= chunks[i]) c -= chunks[i++];
            const int64_t r0 = c * rows, r1 = r0 + rows < g[i].w->rows ? r0 + rows : g[i].w->rows;
            mm_rows(f, A, &g[i], r0, r1, ith);
        }
    }
}

/* norm of x's row r into h, then h's segment converted for the next products */
struct norm_ctx { const float *w, *b; const float *src; float *dst; const int64_t *src_rows; };

static void norm_row(struct fwd *f, const struct acts *A, int64_t r, int64_t e0, int64_t e1, void *p) {
    const struct norm_ctx *c = p;
    const struct tk_hparams *hp = &f->e->hp;
    const int64_t d = hp->n_embd;
    const float *x = c->src + (c->src_rows ? c->src_rows[r] : r) * d;
    float *y = c->dst + r * d;
    if (hp->norm == TK_NORM_RMS) {
        double sum = 0;
        for (int64_t i = 0; i < d; i++) sum += (double)(x[i] * x[i]);
        const float mean = (float)(sum / (double)d);
        const float scale = 1.0f / sqrtf(mean + hp->eps);
        for (int64_t i = e0; i < e1; i++) y[i] = x[i] * scale * c->w[i];
    } else {
        double sum = 0;
        for (int64_t i = 0; i < d; i++) sum += (double)x[i];
        const float mean = (float)(sum / (double)d);
        double sum2 = 0;
        for (int64_t i = 0; i < d; i++) {
            const float v = x[i] - mean;
            sum2 += (double)(v * v);
        }
        const float variance = (float)(sum2 / (double)d);
        const float scale = 1.0f / sqrtf(variance + hp->eps);
        for (int64_t i = e0; i < e1; i++) y[i] = (x[i] - mean) * scale * c->w[i] + c->b[i];
    }
    convert_acts(f, A, r, e0, e1);
}

/* the feed-forward activation of row r: g ← silu(g) · u (SwiGLU) or g ← gelu(u), rows of `width` floats */
struct act_ctx { float *g; const float *u; int64_t width; };

static void ffn_act_row(struct fwd *f, const struct acts *A, int64_t r, int64_t e0, int64_t e1, void *p) {
    const struct act_ctx *c = p;
    float *y = c->g + r * c->width + e0;
    const float *u = c->u + r * c->width + e0;
    if (f->e->hp.ffn == TK_FFN_SWIGLU) {
#ifdef TK_X86
        if (f->simd) swiglu_avx2(y, y, u, e1 - e0);
        else
#endif
            swiglu_lanes(y, y, u, e1 - e0);
    } else if (f->e->hp.ffn == TK_FFN_GEGLU) {
        gelu_row(y, y, e1 - e0, f->simd);
        for (int64_t i = 0; i < e1 - e0; i++) y[i] *= u[i];
    } else {
        gelu_row(y, u, e1 - e0, f->simd);
    }
    convert_acts(f, A, r, e0, e1);
}

static void convert_row(struct fwd *f, const struct acts *A, int64_t r, int64_t e0, int64_t e1, void *p) {
    (void)p;
    convert_acts(f, A, r, e0, e1);
}

/* x ← RMS-normed x times w, in ggml_rms_norm's order (sum of squares in double, then x · scale, then · w) */
static void rms_norm_vec(float *x, const float *w, int64_t n, float eps) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float scale = 1.0f / sqrtf((float)(sum / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) x[i] = x[i] * scale * w[i];
}

/* x[t] ← RMS-norm(h[t]) · w + x[t] for every token: a post-norm (attention or feed-forward output in h) added to the
   residual stream, as llama.cpp's build_norm then ggml_add */
static void post_norm_add(struct fwd *f, const float *w, int ith, int nth) {
    const struct tk_hparams *hp = &f->e->hp;
    const int64_t d = hp->n_embd;
    int64_t a, b;
    split_range(f->n, ith, nth, &a, &b);
    for (int64_t t = a; t < b; t++) {
        float *h = f->h + t * d, *x = f->x + t * d;
        rms_norm_vec(h, w, d, hp->eps);
        for (int64_t i = 0; i < d; i++) x[i] = h[i] + x[i];
    }
    tk_barrier_wait(&f->bar, nth);
}

/* rope as ggml computes it: pairs (2i, 2i+1) for NORM, (i, i + n_rot/2) for NEOX, rotated with the first product of
   each line fused (as GCC contracts ggml's expressions) */
static void rope_vec(const struct tk_engine *e, float *x, const float *cs) {
    const struct tk_hparams *hp = &e->hp;
    const int64_t half = hp->n_rot / 2;
    for (int64_t i = 0; i < half; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const int64_t i0 = hp->rope == TK_ROPE_NEOX ? i : 2 * i, i1 = hp->rope == TK_ROPE_NEOX ? i + half : 2 * i + 1;
        const float x0 = x[i0], x1 = x[i1];
        x[i0] = fmaf(x0, c, -(x1 * s));
        x[i1] = fmaf(x0, s, x1 * c);
    }
}

/* cos/sin for position pos: theta_i = pos · theta_scale^i built by repeated float multiplication, angle
   freq_scale · theta_i / ff_i with frequency factors ff (NULL: none), both times the attention factor
   (ggml_rope_cache_init without YaRN) */
static void rope_cache(const struct tk_engine *e, int64_t pos, float theta_scale, float freq_scale, const float *ff,
                       float *cs) {
    const struct tk_hparams *hp = &e->hp;
    const float mscale = hp->rope_attn_factor;
    float theta = (float)pos;
    for (int64_t i = 0; i < hp->n_rot / 2; i++) {
        const float angle = freq_scale * (ff ? theta / ff[i] : theta);
        cs[2 * i] = cosf(angle) * mscale;
        cs[2 * i + 1] = sinf(angle) * mscale;
        theta *= theta_scale;
    }
}

/* one (layer, position) row of keys or values, converted to the cache's type (quantized as llama.cpp's CPU backend
   quantizes activations) */
static void store_kv(const struct tk_kv *kv, void *base, int type, size_t row, int64_t layer, int64_t pos,
                     const float *src) {
    char *dst = (char *)base + (size_t)(layer * kv->n_ctx + pos) * row;
    if (type == TK_F32) memcpy(dst, src, sizeof(float) * (size_t)kv->kv_dim);
    else if (type == TK_F16) tk_convert(src, TK_F32, dst, TK_F16, (size_t)kv->kv_dim, 1);
    else tk_convert_activation_row(type, src, dst, kv->kv_dim);
}

/* ------------------------------------------------------------------------------------------------ experts */

/* A token's experts as llama.cpp's build_moe_ffn picks them: softmax over the router logits, the n_used most
   probable (in decreasing order), their probabilities divided by their float sum (summed in double). */
static void route(const float *logits, int64_t ne, int64_t k, float *scratch, int32_t *sel, float *w, int simd) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < ne; i++) {
        scratch[i] = logits[i];
        if (logits[i] > mx) mx = logits[i];
    }
    softmax(scratch, ne, mx, simd);
    double sum = 0;
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t i = 0; i < ne; i++) {
            int taken = 0;
            for (int64_t q = 0; q < j; q++) taken |= sel[q] == i;
            if (!taken && (best < 0 || scratch[i] > scratch[best])) best = i;
        }
        sel[j] = (int32_t)best;
        w[j] = scratch[best];
        sum += (double)w[j];
    }
    const float total = (float)sum;
    for (int64_t j = 0; j < k; j++) w[j] = w[j] / total;
}

/* row r of the gathered expert inputs: its token's normed activations, converted for the experts' products */
static void gather_row(struct fwd *f, const struct acts *A, int64_t r, int64_t e0, int64_t e1, void *p) {
    (void)p;
    const int64_t d = f->e->hp.n_embd;
    memcpy(f->xe + r * d + e0, f->h + (int64_t)f->row_token[r] * d + e0, sizeof(float) * (size_t)(e1 - e0));
    convert_acts(f, A, r, e0, e1);
}

/* rows [r0, r0 + rows) of a stacked expert tensor, as a matrix of its own */
/* The feed-forward of an expert layer: the router's products, each token's experts, then the (token, expert) pairs
   grouped by expert so that an expert's matrices are read once for all its tokens, and only the experts some token
   routes to are read at all; finally x[t] += Σ_j w_tj · expert_j(h[t]) (the experts summed first, in the order of
   selection, as llama.cpp adds them). */
static void moe_ffn(struct fwd *f, const struct tk_layer *L, int ith, int nth, int *step) {
    const struct tk_hparams *hp = &f->e->hp;
    const int64_t n = f->n, d = hp->n_embd, ne = hp->n_expert, k = hp->n_expert_used, fe = hp->n_ff_exp;
    struct tk_barrier *bar = &f->bar;

    struct mm router = {&L->gate_inp, NULL, f->router, ne, 0, n, 0};
    struct acts A = plan_acts(f->h, d, &router, 1);
    struct norm_ctx nc = {L->ffn_norm, L->ffn_norm_b, f->x, f->h, NULL};
    for_rows(f, &A, n, d, ith, nth, norm_row, &nc);
    tk_barrier_wait(bar, nth);
    matmuls(f, &A, &router, 1, ith, nth, step);
    tk_barrier_wait(bar, nth);
    {
        int64_t a, b;
        split_range(n, ith, nth, &a, &b);
        float *scratch = f->scratch + ith * f->scratch_per_thread;
        for (int64_t t = a; t < b; t++) route(f->router + t * ne, ne, k, scratch, f->sel + t * k, f->wgt + t * k,
                                              f->simd);
    }
    tk_barrier_wait(bar, nth);
    if (ith == 0) {  /* counting sort of the pairs by expert */
        memset(f->estart, 0, sizeof(int64_t) * (size_t)(ne + 1));
        for (int64_t p = 0; p < n * k; p++) f->estart[f->sel[p] + 1]++;
        for (int64_t e = 0; e < ne; e++) f->estart[e + 1] += f->estart[e];
        for (int64_t p = 0; p < n * k; p++) {
            const int64_t r = f->estart[f->sel[p]]++;
            f->pair_row[p] = (int32_t)r;
            f->row_token[r] = (int32_t)(p / k);
        }
        for (int64_t e = ne; e > 0; e--) f->estart[e] = f->estart[e - 1];
        f->estart[0] = 0;
    }
    tk_barrier_wait(bar, nth);

    /* the products of the experts in use: gate and up over their rows of xe, then down */
    struct tk_mat views[3 * ne];
    struct mm gu[2 * ne], down[ne];
    int ngu = 0, nd = 0;
    for (int64_t e = 0; e < ne; e++) {
        const int64_t r0 = f->estart[e], cnt = f->estart[e + 1] - r0;
        if (!cnt) continue;
        views[3 * e] = mat_rows(&L->gate_exps, e * fe, fe);
        views[3 * e + 1] = mat_rows(&L->up_exps, e * fe, fe);
        views[3 * e + 2] = mat_rows(&L->down_exps, e * d, d);
        for (int j = 0; j < 3; j++) views[3 * e + j].expert = e;
        gu[ngu++] = (struct mm){&views[3 * e], NULL, f->e1 + r0 * fe, fe, 0, cnt, r0};
        gu[ngu++] = (struct mm){&views[3 * e + 1], NULL, f->e2 + r0 * fe, fe, 0, cnt, r0};
        down[nd++] = (struct mm){&views[3 * e + 2], NULL, f->ye + r0 * d, d, 0, cnt, r0};
    }
    A = plan_acts(f->xe, d, gu, ngu);
    for_rows(f, &A, n * k, d, ith, nth, gather_row, NULL);
    tk_barrier_wait(bar, nth);
    matmuls(f, &A, gu, ngu, ith, nth, step);
    tk_barrier_wait(bar, nth);
    A = plan_acts(f->e1, fe, down, nd);
    struct act_ctx ac = {f->e1, f->e2, fe};
    for_rows(f, &A, n * k, fe, ith, nth, ffn_act_row, &ac);
    tk_barrier_wait(bar, nth);
    matmuls(f, &A, down, nd, ith, nth, step);
    tk_barrier_wait(bar, nth);
    {
        int64_t a, b;
        split_range(n, ith, nth, &a, &b);
        for (int64_t t = a; t < b; t++) {
            float *x = f->x + t * d;
            const float *w = f->wgt + t * k;
            const int32_t *rows = f->pair_row + t * k;
            for (int64_t i = 0; i < d; i++) {
                float acc = w[0] * f->ye[(int64_t)rows[0] * d + i];
                for (int64_t j = 1; j < k; j++) acc += w[j] * f->ye[(int64_t)rows[j] * d + i];
                x[i] += acc;
            }
        }
    }
    tk_barrier_wait(bar, nth);
}

static void forward_task(void *p, int ith, int nth) {
    struct fwd *f = p;
    struct tk_engine *e = f->e;
    const struct tk_hparams *hp = &e->hp;
    const int64_t n = f->n, d = hp->n_embd, hd = hp->head_dim, H = hp->n_head, Hkv = hp->n_head_kv;
    const int64_t qd = H * hd, kvd = Hkv * hd, nf = hp->n_ff;
    struct tk_barrier *bar = &f->bar;
    int step = 0;

    /* embeddings */
    {
        int64_t a, b;
        split_range(n, ith, nth, &a, &b);
        for (int64_t t = a; t < b; t++) {
            const struct tk_mat *te = &e->tok_embd;
            tk_dequantize_rows(te->type, (const char *)te->data + (size_t)f->tok[t] * te->row_bytes, f->x + t * d,
                               1, d, 1);
            if (hp->rope == TK_ROPE_NONE) {
                float tmp[d];
                const struct tk_mat *pe = &e->pos_embd;
                tk_dequantize_rows(pe->type, (const char *)pe->data + (size_t)f->pos[t] * pe->row_bytes, tmp, 1,
                                   d, 1);
                for (int64_t i = 0; i < d; i++) f->x[t * d + i] += tmp[i];
            }
            if (hp->embd_scale != 1.0f)
                for (int64_t i = 0; i < d; i++) f->x[t * d + i] *= hp->embd_scale;
        }
    }
    tk_barrier_wait(bar, nth);

    for (int64_t il = 0; il < hp->n_layer; il++) {
        const struct tk_layer *L = &e->layers[il];
        struct mm qkv[3];
        int nq;
        if (L->wqkv.data) {
            qkv[0] = (struct mm){&L->wqkv, L->bqkv, f->q, qd + 2 * kvd, 0, n};
            nq = 1;
        } else {
            qkv[0] = (struct mm){&L->wq, L->bq, f->q, qd + 2 * kvd, 0, n};
            qkv[1] = (struct mm){&L->wk, L->bk, f->q + qd, qd + 2 * kvd, 0, n};
            qkv[2] = (struct mm){&L->wv, L->bv, f->q + qd + kvd, qd + 2 * kvd, 0, n};
            nq = 3;
        }
        /* q, k, v land side by side in f->q: [n][qd + 2 kvd] */
        struct acts A = plan_acts(f->h, d, qkv, nq);
        struct norm_ctx nc = {L->attn_norm, L->attn_norm_b, f->x, f->h, NULL};
        for_rows(f, &A, n, d, ith, nth, norm_row, &nc);
        tk_barrier_wait(bar, nth);
        matmuls(f, &A, qkv, nq, ith, nth, &step);
        tk_barrier_wait(bar, nth);

        /* q/k head norms and rope, then k and v into the cache */
        {
            const int64_t per = H + Hkv;
            int64_t a, b;
            split_range(n * per, ith, nth, &a, &b);
            float cs[hp->n_rot + 2];
            int64_t cs_token = -1;
            for (int64_t u = a; u < b && (hp->rope != TK_ROPE_NONE || L->q_norm); u++) {
                const int64_t t = u / per, h = u % per;
                float *head = f->q + t * (qd + 2 * kvd) + (h < H ? h * hd : qd + (h - H) * hd);
                if (L->q_norm) rms_norm_vec(head, h < H ? L->q_norm : L->k_norm, hd, hp->eps);
                if (hp->rope == TK_ROPE_NONE) continue;
                if (t != cs_token) {
                    if (is_swa(hp, il))
                        rope_cache(e, f->pos[t], e->rope_theta_scale_swa, hp->rope_freq_scale_swa,
                                   f->rope_ff[f->seq[t]], cs);
                    else rope_cache(e, f->pos[t], e->rope_theta_scale, hp->rope_freq_scale, f->rope_ff[f->seq[t]], cs);
                    cs_token = t;
                }
                rope_vec(e, head, cs);
            }
            tk_barrier_wait(bar, nth);
            split_range(n, ith, nth, &a, &b);
            for (int64_t t = a; t < b; t++) {
                const float *row = f->q + t * (qd + 2 * kvd);
                struct tk_kv *kv = f->seqs[f->seq[t]].kv;
                store_kv(kv, kv->k, kv->type_k, kv->row_k, il, f->pos[t], row + qd);
                store_kv(kv, kv->v, kv->type_v, kv->row_v, il, f->pos[t], row + qd + kvd);
            }
        }
        tk_barrier_wait(bar, nth);

        /* attention: the query heads of one (token, kv head) together, at most ATT_GROUP at a time; the items dealt
           out in turn, not in ranges: a token's work grows with its position, so a prompt's last tokens in one range
           took about three times the first ones' (2 threads: the first then waited at the barrier a quarter of the
           attention's time) */
        {
            const int64_t per_kv = H / Hkv, subs = (per_kv + ATT_GROUP - 1) / ATT_GROUP;
            float *scratch = f->scratch + ith * f->scratch_per_thread;
            struct att_query g[ATT_GROUP];
            att_queries(g, ATT_GROUP, scratch, f->max_ctx, hd);
            float *vblock = scratch + ATT_GROUP * (f->max_ctx + 32 + 32 * hd + hd + 16);
            for (int64_t u = ith; u < n * Hkv * subs; u += nth) {
                const int64_t t = u / (Hkv * subs), kvh = u / subs % Hkv, h0 = kvh * per_kv + u % subs * ATT_GROUP;
                const int64_t T = f->pos[t] + 1, first = is_swa(hp, il) && T > hp->n_swa ? T - hp->n_swa : 0;
                const int G = (int)(per_kv - u % subs * ATT_GROUP < ATT_GROUP ? per_kv - u % subs * ATT_GROUP : ATT_GROUP);
                for (int i = 0; i < G; i++) {
                    g[i].q = f->q + t * (qd + 2 * kvd) + (h0 + i) * hd;
                    g[i].out = f->att + t * qd + (h0 + i) * hd;
                }
                attend_group(g, G, f->seqs[f->seq[t]].kv, il, kvh, hd, first, T, hp->attn_scale, hp->attn_softcap,
                             vblock, f->simd);
            }
        }
        /* the attention output added to x, RMS-normed first where the block has a post-attention norm (into h,
           free since the q/k/v products) */
        struct mm wo = {&L->wo, L->bo, L->attn_post_norm ? f->h : f->x, d, !L->attn_post_norm, n};
        A = plan_acts(f->att, qd, &wo, 1);
        tk_barrier_wait(bar, nth);
        for_rows(f, &A, n, qd, ith, nth, convert_row, NULL);
        tk_barrier_wait(bar, nth);
        matmuls(f, &A, &wo, 1, ith, nth, &step);
        tk_barrier_wait(bar, nth);
        if (L->attn_post_norm) post_norm_add(f, L->attn_post_norm, ith, nth);

        /* feed-forward */
        if (L->gate_inp.data) {
            moe_ffn(f, L, ith, nth, &step);
            continue;
        }
        struct mm up[2];
        int nu = 0;
        if (hp->ffn != TK_FFN_GELU) up[nu++] = (struct mm){&L->gate, NULL, f->f1, nf, 0, n};
        up[nu++] = (struct mm){&L->up, L->b_up, f->f2, nf, 0, n};
        A = plan_acts(f->h, d, up, nu);
        nc = (struct norm_ctx){L->ffn_norm, L->ffn_norm_b, f->x, f->h, NULL};
        for_rows(f, &A, n, d, ith, nth, norm_row, &nc);
        tk_barrier_wait(bar, nth);
        matmuls(f, &A, up, nu, ith, nth, &step);
        struct mm down = {&L->down, L->b_down, L->ffn_post_norm ? f->h : f->x, d, !L->ffn_post_norm, n};
        tk_barrier_wait(bar, nth);
        A = plan_acts(f->f1, nf, &down, 1);
        struct act_ctx ac = {f->f1, f->f2, nf};
        for_rows(f, &A, n, nf, ith, nth, ffn_act_row, &ac);
        tk_barrier_wait(bar, nth);
        matmuls(f, &A, &down, 1, ith, nth, &step);
        tk_barrier_wait(bar, nth);
        if (L->ffn_post_norm) post_norm_add(f, L->ffn_post_norm, ith, nth);
    }

    /* output norm for the tokens that want logits or hidden states, then the logits (when any are wanted) */
    const int64_t nout = f->nout;
    struct mm out = {&e->output, NULL, f->out, hp->n_vocab, 0, nout};
    struct acts A = plan_acts(f->h, d, &out, nout > 0);
    struct norm_ctx nc = {e->out_norm, e->out_norm_b, f->x, f->h, f->out_tok};
    for_rows(f, &A, f->nnorm, d, ith, nth, norm_row, &nc);
    tk_barrier_wait(bar, nth);
    if (nout > 0) matmuls(f, &A, &out, 1, ith, nth, &step);
    if (hp->final_softcap > 0) {  /* Gemma 2: logits soft-capped as llama.cpp does (scale, tanh, scale) */
        const float c = hp->final_softcap;
        tk_barrier_wait(bar, nth);
        int64_t a, b;
        split_range(nout * hp->n_vocab, ith, nth, &a, &b);
        for (int64_t i = a; i < b; i++) f->out[i] = tanhf(f->out[i] * (1.0f / c)) * c;
    }
}

/* How many logits rows a sequence wants: every token's (but the first skip_logits), the last one's, or none. */
static int64_t seq_logit_rows(const struct tk_seq *q) {
    return !q->logits ? 0 : q->all_logits ? q->n - q->skip_logits : 1;
}

/* The sequences' arguments, checked: each its own cache of this engine, positions inside it, tokens in the
   vocabulary. Returns the batch's token count, or -1. */
static int64_t check_seqs(const struct tk_engine *e, const struct tk_seq *seqs, int nseq) {
    const struct tk_hparams *hp = &e->hp;
    if (nseq < 1) return -1;
    int64_t total = 0;
    for (int s = 0; s < nseq; s++) {
        const struct tk_seq *q = &seqs[s];
        const struct tk_kv *kv = q->kv;
        if (!kv || !q->tokens || q->n <= 0 || q->pos0 < 0 || q->pos0 > kv->n_ctx || q->n > kv->n_ctx - q->pos0 ||
            q->skip_logits < 0 || q->skip_logits >= q->n || kv->n_layer != hp->n_layer || kv->kv_dim != hp->n_head_kv * hp->head_dim)
            return -1;
        if (hp->rope == TK_ROPE_NONE && q->pos0 + q->n > e->pos_embd.rows) return -1;
        for (int r = 0; r < s; r++)
            if (seqs[r].kv == kv) return -1;  /* two sequences writing one cache */
        for (int64_t t = 0; t < q->n; t++)
            if (q->tokens[t] < 0 || q->tokens[t] >= hp->n_vocab) return -1;
        if (q->n > TK_MAX_BATCH - total) return -1;
        total += q->n;
    }
    return total;
}

int tk_engine_forward(struct tk_engine *e, struct tk_kv *kv, const int32_t *tokens, int64_t n, int64_t pos0,
                      float *logits, int all_logits, int nthreads) {
    const struct tk_seq seq = {kv, tokens, n, pos0, logits, all_logits};
    return tk_engine_forward_batch(e, &seq, 1, nthreads);
}

int tk_engine_forward_batch(struct tk_engine *e, const struct tk_seq *seqs, int nseq, int nthreads) {
    const struct tk_hparams *hp = &e->hp;
    const int64_t n = check_seqs(e, seqs, nseq);
    if (n < 0) return -1;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > ENGINE_MAX_THREADS) nthreads = ENGINE_MAX_THREADS;
    const int64_t d = hp->n_embd, qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    const int64_t ne = hp->n_expert, k = ne ? hp->n_expert_used : 0, fe = ne ? hp->n_ff_exp : 0, nk = n * k;
    int64_t widest = hp->n_ff;
    if (qd > widest) widest = qd;
    if (d > widest) widest = d;
    if (fe > widest) widest = fe;
    const int64_t nf = hp->n_ff;
    int64_t nout = 0, nnorm = 0, max_ctx = 0;
    for (int s = 0; s < nseq; s++) {
        const int64_t rows = seq_logit_rows(&seqs[s]);
        nout += rows;
        nnorm += seqs[s].embd ? seqs[s].n : rows;
        if (seqs[s].kv->n_ctx > max_ctx) max_ctx = seqs[s].kv->n_ctx;
    }
    struct fwd f = {.e = e, .seqs = seqs, .nseq = nseq, .simd = tk_use_simd() ? 1 + tk_use_avx512() : 0, .n = n, .nout = nout, .nnorm = nnorm,
                    .max_ctx = max_ctx};
    f.scratch_per_thread = att_scratch(max_ctx, hp->head_dim);
    if (f.scratch_per_thread < ne + 8) f.scratch_per_thread = ne + 8;  /* a token's router probabilities */
    const size_t floats = (size_t)n * (size_t)(2 * d + qd + 2 * kvd + qd + 2 * nf + ne + k) +
                          (size_t)nk * (size_t)(2 * d + 2 * fe) + (size_t)nthreads * (size_t)f.scratch_per_thread;
    float *mem = malloc(sizeof(float) * floats);
    int32_t *ints = malloc(sizeof(int32_t) * (size_t)(3 * nk + 2 * n + 1));
    int64_t *longs = malloc(sizeof(int64_t) * (size_t)(ne + 1 + 3 * n));
    const float **ff = malloc(sizeof(float *) * (size_t)nseq);
    /* one sequence writes its logits in place; several share a buffer, copied out at the end */
    float *out = nseq == 1 || nout == 0 ? seqs[0].logits : malloc(sizeof(float) * (size_t)nout * (size_t)hp->n_vocab);
    /* converted activations, for every token (every token-expert pair in expert layers): at most 4 bytes per
       element (F16X, AVX512's F16 activations; F16/BF16 and Q8_K16's widened quants take 2, Q8_0 34 per 32) and
       Q8_K16's float scale per 256 */
    f.act_cap = (size_t)(nk > n ? nk : n) * ((size_t)widest * 4 + (size_t)(widest / QK_K + 1) * sizeof(float) + 64);
    f.work_size = tk_matmul_work(widest);
    f.work = malloc(f.work_size * (size_t)nthreads);
    int ok = mem != NULL && ints != NULL && longs != NULL && ff != NULL && (out != NULL || nout == 0) &&
             f.work != NULL;
    for (int j = 0; j < MAX_ACT; j++) ok = ok && (f.act_buf[j] = malloc(f.act_cap)) != NULL;
    if (ok) {
        float *p = mem;
        f.x = p; p += n * d;
        f.h = p; p += n * d;
        f.q = p; p += n * (qd + 2 * kvd);
        f.att = p; p += n * qd;
        f.f1 = p; p += n * nf;
        f.f2 = p; p += n * nf;
        f.router = p; p += n * ne;
        f.wgt = p; p += n * k;
        f.xe = p; p += nk * d;
        f.ye = p; p += nk * d;
        f.e1 = p; p += nk * fe;
        f.e2 = p; p += nk * fe;
        f.scratch = p;
        f.sel = ints;
        f.pair_row = ints + nk;
        f.row_token = ints + 2 * nk;
        int32_t *tok = ints + 3 * nk, *seq = tok + n;
        f.estart = longs;
        /* norm_of[t]: the row of h holding token t's output norm (-1: none) */
        int64_t *pos = longs + ne + 1, *out_tok = pos + n, *norm_of = out_tok + n;
        int64_t t = 0, o = 0;
        for (int s = 0; s < nseq; s++) {
            const struct tk_seq *q = &seqs[s];
            /* LongRoPE: the long factors once the context exceeds the trained one, as llama.cpp picks them by n_ctx */
            ff[s] = e->rope_freqs ? e->rope_freqs : q->kv->n_ctx > hp->n_ctx_orig ? e->rope_long : e->rope_short;
            const int64_t first_logit = q->n - seq_logit_rows(q);
            for (int64_t i = 0; i < q->n; i++, t++) {
                tok[t] = q->tokens[i];
                seq[t] = s;
                pos[t] = q->pos0 + i;
                norm_of[t] = -1;
                if (i >= first_logit) norm_of[t] = o, out_tok[o++] = t;
            }
        }
        /* the tokens whose hidden states alone are wanted: rows after the logits' */
        for (t = 0; t < n; t++)
            if (norm_of[t] < 0 && seqs[seq[t]].embd) norm_of[t] = o, out_tok[o++] = t;
        f.tok = tok, f.seq = seq, f.pos = pos, f.out_tok = out_tok, f.out = out, f.rope_ff = ff;
        tk_barrier_init(&f.bar);
        for (int t = 0; t < ENGINE_MAX_THREADS; t++) {
            atomic_init(&f.taken[0][t], 0);
            atomic_init(&f.taken[1][t], 0);
        }
        tk_parallel(forward_task, &f, nthreads);
        if (nseq > 1 && nout > 0) {
            const float *src = out;
            for (int s = 0; s < nseq; s++) {
                const size_t rows = (size_t)seq_logit_rows(&seqs[s]);
                if (rows) memcpy(seqs[s].logits, src, sizeof(float) * rows * (size_t)hp->n_vocab);
                src += rows * (size_t)hp->n_vocab;
            }
        }
        for (t = 0; t < n; t++) {
            float *embd = seqs[seq[t]].embd;
            if (embd) memcpy(embd + (pos[t] - seqs[seq[t]].pos0) * d, f.h + norm_of[t] * d, sizeof(float) * (size_t)d);
        }
    }
    free(mem);
    free(ints);
    free(longs);
    free(ff);
    if (out != seqs[0].logits) free(out);
    free(f.work);
    for (int j = 0; j < MAX_ACT; j++) free(f.act_buf[j]);
    return ok ? 0 : -3;
}
