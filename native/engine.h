/* The runtime's forward pass in the core: one call evaluates a batch of tokens through every layer.

   The model is described once (hyper-parameters, the architecture's choices of norm/rope/feed-forward, and the
   GGUF tensors by name, memory-mapped by the caller); each call runs on the persistent pool with barriers between
   steps, so Python pays one call per batch. Matrix products run on the stored weight types with activations
   converted to their vec_dot_type as llama.cpp's CPU backend does; attention and softmax follow llama.cpp's float
   order (8-lane FMA sums, ggml-style exp, double-precision softmax sum). */
#ifndef TOOLKIT_ENGINE_H
#define TOOLKIT_ENGINE_H

#include <stddef.h>
#include <stdint.h>

enum tk_norm_kind { TK_NORM_RMS = 0, TK_NORM_LAYER = 1 };
enum tk_rope_kind { TK_ROPE_NONE = 0, TK_ROPE_NORM = 1, TK_ROPE_NEOX = 2 };
enum tk_ffn_kind { TK_FFN_SWIGLU = 0, TK_FFN_GELU = 1, TK_FFN_GEGLU = 2 };

/* The model as the engine composes it; Python fills it by field name (module.c: HPARAM_FIELDS), from the
   architecture's recipe (archs/) and the file's hyper-parameters. */
struct tk_hparams {
    int norm, rope, ffn;
    int64_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    int64_t n_expert, n_expert_used, n_ff_exp;  /* mixture of experts (0, 0, 0 for a dense model) */
    int64_t n_swa, swa_period;  /* sliding-window layers (n_swa > 0): all but every swa_period-th (0: all) */
    float embd_scale;           /* token embeddings multiplied by it (1: none) */
    float rope_base_swa, rope_freq_scale_swa;  /* rope base and frequency scale of the sliding-window layers */
    float rope_base, rope_freq_scale, eps;
    float rope_attn_factor;     /* cos and sin multiplied by it (LongRoPE's attention factor; 1: none) */
    int64_t n_ctx_orig;         /* rope_factors_long rotate when the cache holds more positions than this */
    float attn_scale;           /* q·k multiplied by it (1/sqrt(head_dim) unless the architecture says) */
    float attn_softcap, final_softcap;  /* c · tanh(x / c) of attention scores / logits (0: none) */
};

struct tk_engine;
struct tk_kv;

/* A tensor of the file: name as in GGUF, data (kept alive by the caller) and its size in bytes, ggml type, rows x cols
   (rows = 1 for 1-D). */
struct tk_tensor_desc { const char *name; const void *data; size_t nbytes; int type; int64_t rows, cols; };

/* Largest width (n_embd, n_ff, head size, heads, experts' width) and layer count the engine takes: far above any real
   model, small enough that every product of sizes the engine forms fits in 64 bits. */
#define TK_MAX_WIDTH ((int64_t)1 << 24)
#define TK_MAX_LAYERS ((int64_t)1 << 16)

/* NULL on error, with a message in err (size errlen). Every tensor is checked against its declared size (shape,
   type, bytes) and, for the ones the engine uses, against the shape the hyper-parameters give it, before it is read. */
struct tk_engine *tk_engine_new(const struct tk_hparams *hp, const struct tk_tensor_desc *t, int nt, char *err,
                                int errlen);
void tk_engine_free(struct tk_engine *e);
int64_t tk_engine_vocab(const struct tk_engine *e);
int64_t tk_engine_embd(const struct tk_engine *e);

/* Statistics of the activations entering the matrix products, as llama-imatrix collects them: for tensor i of the
   description whose sum2[i] is not NULL, every activation row x entering a product with it adds x·x to sum2[i] and x
   to sum[i] (cols floats each; for a stacked expert tensor, expert k's at k·cols) and 1 to count[i][k] (k = 0 for a
   dense tensor). Dense products of fewer than 16 tokens are left out, as llama-imatrix leaves them. The arrays belong
   to the caller; NULL stops the collection. Not for passes running concurrently on one engine. */
struct tk_act_stats { int n; float **sum2, **sum; int64_t **count; };
void tk_engine_set_stats(struct tk_engine *e, struct tk_act_stats *stats);

/* GELU as ggml's CPU backend computes it (through an fp16 table) instead of exactly: for comparisons with llama.cpp. */
void tk_set_gelu_fp16(int on);

/* KV cache of n_ctx positions, keys stored as type_k and values as type_v: F32, F16, or Q8_0 / Q4_0 when the head
   size is a multiple of their 32-element blocks; NULL for a bad size or type, a size whose bytes overflow, or no
   memory. */
struct tk_kv *tk_kv_new(const struct tk_engine *e, int64_t n_ctx, int type_k, int type_v);
void tk_kv_free(struct tk_kv *kv);
int64_t tk_kv_size(const struct tk_kv *kv);

/* Evaluate tokens[0..n) at positions pos0..pos0+n-1 (the cache must hold pos0 valid positions). logits receives
   n_vocab floats per token (all_logits) or for the last token only. Returns 0, -1 for bad arguments, -3 when memory
   ran out. */
int tk_engine_forward(struct tk_engine *e, struct tk_kv *kv, const int32_t *tokens, int64_t n, int64_t pos0,
                      float *logits, int all_logits, int nthreads);

/* One sequence of a batch: tokens[0..n) at positions pos0.. of its own cache kv, its logits as tk_engine_forward
   gives them (logits NULL: none, and without any the output matrix is not run). embd, when not NULL, receives n_embd
   floats per token for all n tokens: the hidden states after the output norm (what llama.cpp's embeddings read).
   skip_logits (0 <= skip_logits < n, with all_logits): the first skip_logits tokens get no logits row, as llama.cpp's
   per-token output flags leave them out (llama-perplexity scores only the second half of a chunk). */
struct tk_seq {
    struct tk_kv *kv;
    const int32_t *tokens;
    int64_t n, pos0;
    float *logits;
    int all_logits;
    float *embd;
    int64_t skip_logits;
};

/* Most tokens one batch takes (all sequences together). */
#define TK_MAX_BATCH ((int64_t)1 << 20)

/* Several sequences in one pass: the matrix products run once over all their tokens (each token's result is the
   same bits as in a pass of its own), every token attends only to its own sequence's cache. Two sequences may not
   share a cache. Returns as tk_engine_forward. */
int tk_engine_forward_batch(struct tk_engine *e, const struct tk_seq *seqs, int nseq, int nthreads);

#endif
