/* libFuzzer target for the C core's entry points that take data from a file: tk_engine_new over descriptors made from
   the input (hyper-parameters, tensor names from the engine's own vocabulary of names or random, types, shapes, data
   shorter or longer than declared), a short forward pass when the engine takes them; and tk_dequantize_rows /
   tk_quantize_rows / tk_quantize_rows_from over random rows of every type. Built with
   -fsanitize=fuzzer,address,undefined by `make fuzz`; a finding aborts with the input saved as a crash file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "engine.h"
#include "quants.h"

struct input { const uint8_t *p; size_t n; };

static uint64_t take(struct input *in, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes && in->n; i++, in->p++, in->n--) v |= (uint64_t)in->p[0] << (8 * i);
    return v;
}

/* a size: mostly small, sometimes one of the values that break arithmetic */
static int64_t size(struct input *in, int64_t small) {
    static const int64_t edges[] = {0, -1, 1, (int64_t)1 << 24, ((int64_t)1 << 24) + 1, (int64_t)1 << 31,
                                    (int64_t)1 << 40, INT64_MAX, INT64_MIN};
    uint8_t sel = (uint8_t)take(in, 1);
    if (sel < 16) return edges[sel % (sizeof edges / sizeof edges[0])];
    return (int64_t)(take(in, 2) % (uint64_t)(small + 1));
}

static float number(struct input *in) {
    uint32_t bits = (uint32_t)take(in, 4);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static const char *NAMES[] = {"token_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight",
    "blk.0.attn_norm.weight", "blk.0.attn_norm.bias", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
    "blk.0.attn_v.weight", "blk.0.attn_qkv.weight", "blk.0.attn_output.weight", "blk.0.attn_q.bias",
    "blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight", "blk.0.ffn_norm.weight", "blk.0.ffn_gate.weight",
    "blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_exps.weight",
    "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight", "blk.1.attn_norm.weight", "position_embd.weight",
    "rope_freqs.weight", "rope_factors_long.weight", "blk.99999999999999999999.attn_q.weight", "blk.-1.x", "blk."};
#define N_NAMES ((int)(sizeof NAMES / sizeof NAMES[0]))
static const int TYPES[] = {0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30, 4, 99, -1};
#define N_TYPES ((int)(sizeof TYPES / sizeof TYPES[0]))

static void hparams(struct input *in, struct tk_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    hp->norm = (int)take(in, 1) % 3;
    hp->rope = (int)take(in, 1) % 4;
    hp->ffn = (int)take(in, 1) % 4;
    hp->n_vocab = size(in, 64);
    hp->n_embd = size(in, 64);
    hp->n_layer = size(in, 2);
    hp->n_head = size(in, 8);
    hp->n_head_kv = size(in, 8);
    hp->head_dim = size(in, 32);
    hp->n_ff = size(in, 128);
    hp->n_rot = size(in, 32);
    hp->n_expert = size(in, 4);
    hp->n_expert_used = size(in, 4);
    hp->n_ff_exp = size(in, 64);
    hp->n_swa = size(in, 8);
    hp->swa_period = size(in, 4);
    hp->embd_scale = number(in);
    hp->rope_base = number(in);
    hp->rope_freq_scale = number(in);
    hp->rope_base_swa = number(in);
    hp->rope_freq_scale_swa = number(in);
    hp->eps = number(in);
    hp->rope_attn_factor = number(in);
    hp->n_ctx_orig = size(in, 64);
    hp->attn_scale = number(in);
    hp->attn_softcap = number(in);
    hp->final_softcap = number(in);
}

static void fuzz_engine(struct input *in) {
    struct tk_hparams hp;
    hparams(in, &hp);
    int nt = (int)(take(in, 1) % 24);
    struct tk_tensor_desc t[24];
    void *data[24] = {0};
    char random_names[24][16];
    for (int i = 0; i < nt; i++) {
        int pick = (int)take(in, 1);
        if (pick % 8 == 7) {
            snprintf(random_names[i], sizeof random_names[i], "blk.%d.%x", (int)(take(in, 1) % 3), (unsigned)take(in, 2));
            t[i].name = random_names[i];
        } else {
            t[i].name = NAMES[pick % N_NAMES];
        }
        t[i].type = TYPES[take(in, 1) % N_TYPES];
        t[i].rows = size(in, 64);
        t[i].cols = size(in, 256);
        size_t nbytes = (size_t)(take(in, 2) % 65536);
        data[i] = calloc(1, nbytes ? nbytes : 1);  /* the real size: ASan sees any read beyond it */
        size_t fill = nbytes < in->n ? nbytes : in->n;
        memcpy(data[i], in->p, fill);
        t[i].data = data[i];
        t[i].nbytes = nbytes;
    }
    char err[512];
    struct tk_engine *e = tk_engine_new(&hp, t, nt, err, sizeof err);
    if (e) {
        static const int KV_TYPES[4] = {TK_F32, TK_F16, TK_Q8_0, TK_Q4_0};
        const int kv_type = KV_TYPES[take(in, 1) % 4];
        struct tk_kv *kv = tk_kv_new(e, 8, kv_type, kv_type);
        if (kv) {
            int32_t tokens[3];
            for (int i = 0; i < 3; i++) tokens[i] = (int32_t)take(in, 4);
            int64_t n_vocab = tk_engine_vocab(e);
            if (n_vocab > 0 && n_vocab <= (1 << 20)) {
                float *logits = malloc(sizeof(float) * (size_t)n_vocab * 3);
                tk_engine_forward(e, kv, tokens, 1 + (int64_t)(take(in, 1) % 3), 0, logits, 1, 1);
                free(logits);
            }
            tk_kv_free(kv);
        }
        tk_engine_free(e);
    }
    for (int i = 0; i < nt; i++) free(data[i]);
}

static void fuzz_rows(struct input *in) {
    int type = TYPES[take(in, 1) % N_TYPES];
    int64_t nrows = size(in, 4), n_per_row = size(in, 512);
    const struct tk_type_traits *tr = tk_traits(type);
    if (!tr || nrows < 0 || n_per_row < 0 || (tr->block_size > 0 && n_per_row % tr->block_size)) {
        /* bad arguments the calls must refuse by themselves, touching nothing */
        float dummy[1];
        if (tk_dequantize_rows(type, dummy, dummy, nrows, n_per_row, 1) != -1 ||
            tk_quantize_rows(type, dummy, dummy, nrows, n_per_row, 1) != -1) abort();
        return;
    }
    if (nrows > 8 || n_per_row > 4096) return;  /* sizes no small buffer holds */
    size_t row = tk_row_size(type, n_per_row);
    size_t packed = row * (size_t)nrows, floats = sizeof(float) * (size_t)(nrows * n_per_row);
    uint8_t *q = calloc(1, packed + 1);
    float *f = calloc(1, floats + 1);
    memcpy(q, in->p, packed < in->n ? packed : in->n);
    if (tk_dequantize_rows(type, q, f, nrows, n_per_row, 1 + (int)(take(in, 1) % 2)) == 0) {
        memcpy(f, in->p, floats < in->n ? floats : in->n);  /* any bit patterns, NaN and Inf included */
        tk_quantize_rows(type, f, q, nrows, n_per_row, 1);
        int64_t nonfinite = 0;
        tk_quantize_rows_from(type, f, 0, q, nrows, n_per_row, 1, &nonfinite);
    }
    free(q);
    free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    struct input in = {data, n};
    if (take(&in, 1) & 1) fuzz_engine(&in);
    else fuzz_rows(&in);
    return 0;
}
