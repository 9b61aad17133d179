/* AVX2 versions of the vec_dots of dot.c (chosen when tk_use_simd()). Integer products within blocks are exact, as
   in the scalar code; the float sums run in 8 vector lanes (FMA), in the order of ggml's AVX2 kernels
   (ggml-cpu/arch/x86/quants.c), whose results the quantized types reproduce bit for bit given the same activation
   bytes (Q4_K excepted: its float sums run per sub-block, see super_q4_K); they differ from the scalar ones only by
   float rounding. Activations are what dot.c's conversion makes:
   Q8_0/Q8_1 quants lie in [-127, 127], which the sign trick of the signed × signed products needs; Q8_K quants may
   reach -128, and are only ever multiplied with unsigned weights (maddubs). */
#include <string.h>
#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include "dot_x86.h"

static inline AVX2 float hsum4(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}



/* signed x · signed y (y never -128), pairs summed twice: 8 int32 */
static inline AVX2 __m256i dot_s8(__m256i x, __m256i y) {
    return _mm256_madd_epi16(pairs_s8(x, y), _mm256_set1_epi16(1));
}

/* unsigned x · signed y: 8 int32 */
static inline AVX2 __m256i dot_u8(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}


/* 32 bits (little-endian) -> 32 bytes, 0xFF where the bit is set */
static inline AVX2 __m256i bits32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return bits32_mask(v);
}




/* Q3_K: the 16 signed scales */
static inline AVX2 __m128i q3_scales(const uint8_t q[12]) {
    uint32_t a, b, c;
    memcpy(&a, q, 4);
    memcpy(&b, q + 4, 4);
    memcpy(&c, q + 8, 4);
    const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
    __m128i v = _mm_setr_epi32((int)((a & m4) | (c & m2) << 4), (int)((b & m4) | ((c >> 2) & m2) << 4),
                               (int)(((a >> 4) & m4) | ((c >> 4) & m2) << 4),
                               (int)(((b >> 4) & m4) | ((c >> 6) & m2) << 4));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* ---------------------------------------------------------------------------------------------- float types */

AVX2 void tk_vec_dot_f32_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float sum = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}



/* F16 and BF16 at the AVX2 and AVX-VNNI levels have an order of their own (the levels need not agree: they are no
   exact types; AVX512's is dot_avx512.c's): one 8-lane accumulator per (row, token), 8 elements a step, then hsum8,
   then the elements past the last whole step one by one. One accumulator per pair is what lets a prompt tile hold
   3 rows × 4 tokens (FLOAT16_TILE_AVX2 below), where ggml's order (four accumulators over steps of 32, which this
   level followed before) allowed 1 × 3. A row's one chain of fused multiply-adds waits on itself: generation's
   products take two rows at once (vec_dot2), two chains. */
#define FLOAT16_DOTS_AVX2(T, ET, LOAD, TOF)                                                                   \
    static inline AVX2 float dot_tail_##T(float sum, const ET *x, const ET *y, int64_t i, int64_t n) {        \
        for (; i < n; i++) sum += TOF(x[i]) * TOF(y[i]);                                                      \
        return sum;                                                                                           \
    }                                                                                                         \
    AVX2 void tk_vec_dot_##T##_avx2(int64_t n, float *s, const void *vx, const void *vy) {                    \
        const ET *x = vx, *y = vy;                                                                            \
        __m256 acc = _mm256_setzero_ps();                                                                     \
        int64_t i = 0;                                                                                        \
        for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(LOAD(x + i), LOAD(y + i), acc);                      \
        *s = dot_tail_##T(hsum8(acc), x, y, i, n);                                                            \
    }                                                                                                         \
    /* two rows against one activation row, each with tk_vec_dot's operations; the weights fetched ahead */    \
    AVX2 void tk_vec_dot2_##T##_avx2(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {        \
        const ET *x0 = vx, *x1 = (const ET *)((const char *)vx + bx), *y = vy;                                \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                                             \
        int64_t i = 0;                                                                                        \
        for (; i + 8 <= n; i += 8) {                                                                          \
            if (i % 32 == 0) {                                                                                \
                _mm_prefetch((const char *)(x0 + i) + PREFETCH, PREFETCH_HINT);                               \
                _mm_prefetch((const char *)(x1 + i) + PREFETCH, PREFETCH_HINT);                               \
            }                                                                                                 \
            const __m256 yi = LOAD(y + i);                                                                    \
            a0 = _mm256_fmadd_ps(LOAD(x0 + i), yi, a0);                                                       \
            a1 = _mm256_fmadd_ps(LOAD(x1 + i), yi, a1);                                                       \
        }                                                                                                     \
        s[0] = dot_tail_##T(hsum8(a0), x0, y, i, n);                                                          \
        s[1] = dot_tail_##T(hsum8(a1), x1, y, i, n);                                                          \
    }                                                                                                         \
    /* a row converted to F32 (exactly) for the packed tile */                                                \
    static AVX2 void pack_##T##_avx2(const void *vx, void *dst, int64_t n) {                                  \
        const ET *x = vx;                                                                                     \
        float *d = dst;                                                                                       \
        int64_t i = 0;                                                                                        \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, LOAD(x + i));                                      \
        for (; i < n; i++) d[i] = TOF(x[i]);                                                                  \
    }

FLOAT16_DOTS_AVX2(f16, tk_half, load_f16, h2f)
FLOAT16_DOTS_AVX2(bf16, uint16_t, load_bf16, bf2f)

/* ---------------------------------------------------------------------------------------------- legacy types */
/* One block each: acc + d_x·d_y·(integer dot product in 8 lanes), in one accumulator as ggml's AVX2 kernels do:
   same speed here as two interleaved chains, and the same float results as llama.cpp's. */

static inline AVX2 __m256 scaled(__m256i isum, tk_half dx, tk_half dy, __m256 acc) {
    const float d = tk_fp16_table[dx] * tk_fp16_table[dy];
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
}

static inline AVX2 __m256 block_q4_1_q8_1(const block_q4_1 *x, const block_q8_1 *y, __m256 acc, float *summ) {
    *summ += tk_fp16_table[x->m] * tk_fp16_table[y->s];
    return scaled(dot_u8(nibbles32(x->qs), load32(y->qs)), x->d, y->d, acc);
}

static inline AVX2 __m256 block_q5_0_q8_0(const block_q5_0 *x, const block_q8_0 *y, __m256 acc, float *summ) {
    (void)summ;
    /* (nibble | h<<4) - 16: a clear high bit makes the byte nibble - 16 = nibble | 0xF0 */
    __m256i hi = _mm256_andnot_si256(bits32(x->qh), _mm256_set1_epi8((char)0xF0));
    __m256i qx = _mm256_or_si256(nibbles32(x->qs), hi);
    return scaled(dot_s8(qx, load32(y->qs)), x->d, y->d, acc);
}

static inline AVX2 __m256 block_q5_1_q8_1(const block_q5_1 *x, const block_q8_1 *y, __m256 acc, float *summ) {
    *summ += tk_fp16_table[x->m] * tk_fp16_table[y->s];
    __m256i hi = _mm256_and_si256(bits32(x->qh), _mm256_set1_epi8(0x10));
    __m256i qx = _mm256_or_si256(nibbles32(x->qs), hi);
    return scaled(dot_u8(qx, load32(y->qs)), x->d, y->d, acc);
}

static inline AVX2 __m256 block_q8_0_q8_0(const block_q8_0 *x, const block_q8_0 *y, __m256 acc, float *summ) {
    (void)summ;
    return scaled(dot_s8(load32(x->qs), load32(y->qs)), x->d, y->d, acc);
}

#define LEGACY_DOT(NAME, XT, YT, BLOCK)                                                        \
    AVX2 void NAME(int64_t n, float *s, const void *vx, const void *vy) {                     \
        const XT *x = vx;                                                                      \
        const YT *y = vy;                                                                      \
        const int64_t nb = n / QK;                                                             \
        __m256 acc = _mm256_setzero_ps();                                                      \
        float summ = 0;                                                                        \
        for (int64_t b = 0; b < nb; b++) acc = BLOCK(&x[b], &y[b], acc, &summ);                \
        *s = hsum8(acc) + summ;                                                                \
    }

LEGACY_DOT(tk_vec_dot_q8_0_q8_0_avx2, block_q8_0, block_q8_0, block_q8_0_q8_0)

/* Two weight rows (at x and x + bx) against one activation row: two independent accumulation chains sharing the
   activation loads; each row's float operations are exactly those of the one-row kernel. */
#define LEGACY_DOT2(NAME, XT, YT, BLOCK, ATTR)                                                  \
    ATTR void NAME(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {            \
        const XT *x0 = vx, *x1 = (const XT *)((const char *)vx + bx);                           \
        const YT *y = vy;                                                                       \
        const int64_t nb = n / QK;                                                              \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;                                         \
        float summ0 = 0, summ1 = 0;                                                             \
        for (int64_t b = 0; b < nb; b++) {                                                      \
            _mm_prefetch((const char *)&x0[b] + PREFETCH, PREFETCH_HINT);                       \
            _mm_prefetch((const char *)&x1[b] + PREFETCH, PREFETCH_HINT);                       \
            acc0 = BLOCK(&x0[b], &y[b], acc0, &summ0);                                          \
            acc1 = BLOCK(&x1[b], &y[b], acc1, &summ1);                                          \
        }                                                                                       \
        s[0] = hsum8(acc0) + summ0;                                                             \
        s[1] = hsum8(acc1) + summ1;                                                             \
    }

/* the cache lines of one (super-)block, PREFETCH bytes ahead */
static inline void prefetch_block(const void *p, size_t size) {
    for (size_t o = 0; o < size; o += 64) _mm_prefetch((const char *)p + PREFETCH + o, PREFETCH_HINT);
}

LEGACY_DOT2(tk_vec_dot2_q8_0_q8_0_avx2, block_q8_0, block_q8_0, block_q8_0_q8_0, AVX2)

/* AVX-VNNI (vpdpbusd: 4 unsigned x signed byte products summed into each int32 lane), same lanes as the AVX2 code:
   Q4_0's (q - 8)·y as q·y - 8·y; Q8_0's x·y as |x|·sign(y, x). */

static inline VNNI __m256i dpbusd(__m256i u, __m256i s) {
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
}

static inline VNNI __m256 block_q8_0_q8_0_vnni(const block_q8_0 *x, const block_q8_0 *y, __m256 acc, float *summ) {
    (void)summ;
    const __m256i qx = load32(x->qs);
    return scaled(dpbusd(_mm256_abs_epi8(qx), _mm256_sign_epi8(load32(y->qs), qx)), x->d, y->d, acc);
}

LEGACY_DOT2(tk_vec_dot2_q8_0_q8_0_vnni, block_q8_0, block_q8_0, block_q8_0_q8_0_vnni, VNNI)

/* ---------------------------------------------------------------------------------------------- Q4_0, block sums */
/* Q4_0 in dot.c's block-sum order (llama.cpp's repacked Q4_0 gemv/gemm): per block the exact integer Σ (q - 8)·y, then
   acc = fma(sum, d_x·d_y, acc), blocks in order. The integer lanes of four blocks are summed per block at once (integer
   adds, exact in any order), then their four float steps follow one another. */

/* one block's int32 lanes, Σ of each lane's four (q - 8)·y: by the sign trick (AVX2) or vpdpbusd, q·y - 8·y (VNNI) */
static inline AVX2 __m256i q4_0_lanes_avx2(const block_q4_0 *x, const block_q8_0 *y) {
    return dot_s8(_mm256_sub_epi8(nibbles32(x->qs), _mm256_set1_epi8(8)), load32(y->qs));
}
static inline VNNI __m256i q4_0_lanes_vnni(const block_q4_0 *x, const block_q8_0 *y) {
    const __m256i qy = load32(y->qs);
    return _mm256_sub_epi32(dpbusd(nibbles32(x->qs), qy), dpbusd(_mm256_set1_epi8(8), qy));
}

/* NR weight rows (at x + r·bx) against one activation row, LANES the level's block lanes */
#define Q4_0_BLOCKSUM_ROWS(NAME, NR, LANES, ATTR)                                                             \
    ATTR void NAME(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {                          \
        const block_q8_0 *y = vy;                                                                            \
        const int64_t nb = n / QK;                                                                           \
        float acc[NR];                                                                                       \
        for (int r = 0; r < NR; r++) acc[r] = 0;                                                             \
        int64_t b = 0;                                                                                       \
        for (; b + 4 <= nb; b += 4)                                                                          \
            for (int r = 0; r < NR; r++) {                                                                   \
                const block_q4_0 *x = (const block_q4_0 *)((const char *)vx + r * bx) + b;                  \
                _mm_prefetch((const char *)x + PREFETCH, PREFETCH_HINT);                                    \
                const __m128i sums = block_sums4(LANES(x, y + b), LANES(x + 1, y + b + 1), LANES(x + 2, y + b + 2), \
                                                 LANES(x + 3, y + b + 3));                                   \
                acc[r] = q4_0_steps4(sums, x, y + b, acc[r]);                                            \
            }                                                                                                \
        for (; b < nb; b++)                                                                                  \
            for (int r = 0; r < NR; r++) {                                                                   \
                const block_q4_0 *x = (const block_q4_0 *)((const char *)vx + r * bx) + b;                  \
                acc[r] = fmaf((float)lanes_isum(LANES(x, y + b)), tk_fp16_table[x->d] * tk_fp16_table[y[b].d], \
                              acc[r]);                                                                       \
            }                                                                                                \
        for (int r = 0; r < NR; r++) s[r] = acc[r];                                                          \
    }

static Q4_0_BLOCKSUM_ROWS(q4_0_row_avx2, 1, q4_0_lanes_avx2, AVX2)
AVX2 void tk_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    q4_0_row_avx2(n, s, vx, 0, vy);
}
Q4_0_BLOCKSUM_ROWS(tk_vec_dot2_q4_0_q8_0_avx2, 2, q4_0_lanes_avx2, AVX2)
Q4_0_BLOCKSUM_ROWS(tk_vec_dot2_q4_0_q8_0_vnni, 2, q4_0_lanes_vnni, VNNI)
LEGACY_DOT(tk_vec_dot_q4_1_q8_1_avx2, block_q4_1, block_q8_1, block_q4_1_q8_1)
LEGACY_DOT(tk_vec_dot_q5_0_q8_0_avx2, block_q5_0, block_q8_0, block_q5_0_q8_0)
LEGACY_DOT(tk_vec_dot_q5_1_q8_1_avx2, block_q5_1, block_q8_1, block_q5_1_q8_1)

/* ---------------------------------------------------------------------------------------------- tiles */
/* Matrix-matrix tiles for prompt processing: RM weight rows × RN activation rows at once. Every (row, token) pair
   keeps its own accumulator, fed block by block with exactly the float operations of the one-row kernel above, so
   every result is bit for bit that kernel's (and, Q4_K aside, llama.cpp's: its one-token vec_dot's, for Q4_0 its
   repacked gemv's); what the tile saves is work per pair: each weight block is unpacked once for RN tokens, each
   activation block loaded once for RM rows.
   Builds: AVX2 (sign trick per pair), AVX-VNNI (Q8_0 and Q4_K; for Q4_0 and Q6_K that level takes the AVX2 tiles,
   see the table at the end), and AVX512 (in dot_avx512.c).
   Integer sums per lane are exact in every build:
     Q4_0: (q - 8)·y = q·y - 8·Σy, the -8·Σy lanes made once per token and fed to vpdpbusd as its start value;
     Q8_0: x·y = (y + 128)·x - 128·Σx, the -128·Σx lanes made once per row (|y| ≤ 127, so y + 128 is a byte). */



static inline VNNI __m256i dpbusd_vex(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }

#define NEG32(v) _mm256_sub_epi32(_mm256_setzero_si256(), v)

/* per-block preparation of the weight side (w, c) and of the activation side (a, e), then one pair's int32 lanes;
   DP is the vpdpbusd of the build (unused by the AVX2 ones) */
#define Q4_0_X_AVX2(x, w, c, DP) (w = _mm256_sub_epi8(nibbles32((x)->qs), _mm256_set1_epi8(8)), c = w)
#define Q8_0_X_AVX2(x, w, c, DP) (w = load32((x)->qs), c = w)
#define Q8_Y_AVX2(y, a, e, DP) (a = load32((y)->qs), e = a)
#define DOT_AVX2(w, c, a, e, DP) dot_s8(w, a)
#define Q8_0_X_VNNI(x, w, c, DP) \
    (w = load32((x)->qs), c = NEG32(DP(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), w)))
#define Q8_0_Y_VNNI(y, a, e, DP) (a = _mm256_xor_si256(load32((y)->qs), _mm256_set1_epi8((char)0x80)), e = a)
#define Q8_0_DOT_VNNI(w, c, a, e, DP) DP(c, a, w)


/* block b of each of a legacy tile's RM weight rows, prepared by PX (w, c), and its scale d_x in every lane of a
   VF register: the same for both register widths */
#define LEGACY_ROWS(XT, RM, PX, DP, VI, VF, SET1)                                                             \
    VI w[RM], c[RM];                                                                                         \
    VF dx[RM];                                                                                               \
    (void)c;                                                                                                 \
    for (int r = 0; r < RM; r++) {                                                                           \
        const XT *x = (const XT *)((const char *)vx + r * bx) + b;                                          \
        PX(x, w[r], c[r], DP);                                                                               \
        dx[r] = SET1(tk_fp16_table[x->d]);                                                                   \
    }

#define LEGACY_TILE(NAME, XT, RM, RN, PX, PY, DOT, DP, ATTR, NARROW)                                                 \
    ATTR void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {   \
        const int64_t nb = n / QK;                                                                         \
        __m256 acc[RM][RN];                                                                                \
        for (int r = 0; r < RM; r++)                                                                       \
            for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();                                  \
        for (int64_t b = 0; b < nb; b++) {                                                                 \
            LEGACY_ROWS(XT, RM, PX, DP, __m256i, __m256, _mm256_set1_ps)                                 \
            for (int t = 0; t < RN; t++) {                                                                 \
                const block_q8_0 *y = (const block_q8_0 *)((const char *)vy + t * by) + b;              \
                __m256i a, e;                                                                              \
                PY(y, a, e, DP);                                                                            \
                (void)e;                                                                                   \
                const __m256 dy = _mm256_broadcast_ss(&tk_fp16_table[y->d]);                               \
                for (int r = 0; r < RM; r++)                                                               \
                    acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dx[r], dy),                                  \
                                                _mm256_cvtepi32_ps(DOT(w[r], c[r], a, e, DP)), acc[r][t]); \
            }                                                                                              \
        }                                                                                                  \
        for (int r = 0; r < RM; r++)                                                                       \
            for (int t = 0; t < RN; t++) s[r * ls + t] = hsum8(acc[r][t]);                                 \
    }                                                                                                                 \
    PACKED_TILE_ENTRY(NAME, RM, RN, NULL, 0, 0, NARROW)

/* Q4_0 tiles in the block-sum order of its one-token kernels: a block's 4 × 2 (row, token) pairs' lanes summed into
   one register (lane t·4 + r), so the eight pairs' float steps, fma(Σ, d_x·d_y, acc), are one instruction */
#define Q4_0_TILE(NAME, PX, PY, DOT, DP, ATTR, NARROW)                                                        \
    ATTR void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {   \
        enum { RM = 4, RN = 2 };                                                                             \
        __m256 acc = _mm256_setzero_ps();                                                                    \
        for (int64_t b = 0; b < n / QK; b++) {                                                               \
            __m256i w[RM], c[RM], v[RM * RN];                                                                \
            float dx[RM], dy[RN];                                                                            \
            (void)c;                                                                                         \
            for (int r = 0; r < RM; r++) {                                                                   \
                const block_q4_0 *x = (const block_q4_0 *)((const char *)vx + r * bx) + b;                  \
                PX(x, w[r], c[r], DP);                                                                       \
                dx[r] = tk_fp16_table[x->d];                                                                 \
            }                                                                                                \
            for (int t = 0; t < RN; t++) {                                                                   \
                const block_q8_0 *y = (const block_q8_0 *)((const char *)vy + t * by) + b;                  \
                __m256i a, e;                                                                                \
                PY(y, a, e, DP);                                                                             \
                (void)e;                                                                                     \
                dy[t] = tk_fp16_table[y->d];                                                                 \
                for (int r = 0; r < RM; r++) v[t * RM + r] = DOT(w[r], c[r], a, e, DP);                      \
            }                                                                                                \
            const __m256 d = _mm256_mul_ps(_mm256_setr_ps(dx[0], dx[1], dx[2], dx[3], dx[0], dx[1], dx[2], dx[3]), \
                                           _mm256_setr_ps(dy[0], dy[0], dy[0], dy[0], dy[1], dy[1], dy[1], dy[1])); \
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_sums8(v)), d, acc);                              \
        }                                                                                                    \
        float out[RM * RN];                                                                                  \
        _mm256_storeu_ps(out, acc);                                                                          \
        for (int t = 0; t < RN; t++)                                                                         \
            for (int r = 0; r < RM; r++) s[r * ls + t] = out[t * RM + r];                                    \
    }                                                                                                        \
    PACKED_TILE_ENTRY(NAME, 4, 2, NULL, 0, 0, NARROW)

/* row r's 16 bytes at x + r·bx (zero for r >= nr) in lane r of q[j], 4 bytes a lane: q[j] holds bytes 4j..4j+3 (one
   16-byte load per row, then 4 x 4 transposes of 32-bit words in each 128-bit half) */
static inline AVX2 void rows8_quads(const char *x, size_t bx, int nr, __m256i q[4]) {
#define ROW_BYTES(r) ((r) < nr ? _mm_loadu_si128((const __m128i *)(x + (r) * bx)) : _mm_setzero_si128())
    __m256i z[4]; /* [row k | row k + 4] */
    for (int k = 0; k < 4; k++) z[k] = _mm256_inserti128_si256(_mm256_castsi128_si256(ROW_BYTES(k)), ROW_BYTES(k + 4), 1);
#undef ROW_BYTES
    const __m256i t0 = _mm256_unpacklo_epi32(z[0], z[1]), t1 = _mm256_unpackhi_epi32(z[0], z[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(z[2], z[3]), t3 = _mm256_unpackhi_epi32(z[2], z[3]);
    q[0] = _mm256_unpacklo_epi64(t0, t2);
    q[1] = _mm256_unpackhi_epi64(t0, t2);
    q[2] = _mm256_unpacklo_epi64(t1, t3);
    q[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* Q4_0 for one token (generation) on AVX2: 8 rows a tile, one per 32-bit lane, read from the file (rows8_quads) —
   instead of the two-row kernel's sum across the lanes of every block. The nibbles (unsigned) meet the token's bytes
   broadcast four at a time by vpmaddubsw (a pair within 15·127·2, eight of them within 30480: exact in 16 bits),
   one vpmaddwd, from -8·Σy: the lane is Σ (q - 8)·y, the one-token kernels' exact integer; then their float step,
   fma(Σ, d_x·d_y, acc): their bits. The 8 rows are 8 short streams, which the hardware prefetchers follow badly:
   the row tile after next (it follows in the file) is fetched as one linear stream at the pace this one is read. */
#define Q4_0X8_AHEAD 16
static AVX2 void tile_q4_0x8_raw1(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy,
                                  size_t by) {
    (void)by;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        for (int o = 0; o < 8 * (int)sizeof(block_q4_0); o += 64)
            _mm_prefetch((const char *)vx + Q4_0X8_AHEAD * bx + (size_t)b * 8 * sizeof(block_q4_0) + o, PREFETCH_HINT);
        const char *x = (const char *)vx + (size_t)b * sizeof(block_q4_0);
        __m256i q[4];
        rows8_quads(x + offsetof(block_q4_0, qs), bx, 8, q);
        const block_q4_0 *r[8];
        for (int k = 0; k < 8; k++) r[k] = (const block_q4_0 *)(x + k * bx);
        const __m256 dx = _mm256_cvtph_ps(_mm_setr_epi16((short)r[0]->d, (short)r[1]->d, (short)r[2]->d,
                                                         (short)r[3]->d, (short)r[4]->d, (short)r[5]->d,
                                                         (short)r[6]->d, (short)r[7]->d));
        int32_t a[8];
        memcpy(a, y[b].qs, sizeof a);
        __m256i s16 = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(q[j], m4), _mm256_set1_epi32(a[j])));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi32(q[j], 4), m4),
                                                             _mm256_set1_epi32(a[j + 4])));
        }
        const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(-8 * q8_0_sum(&y[b])));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dx, _mm256_set1_ps(tk_fp16_table[y[b].d])), acc);
    }
    float o[8];
    _mm256_storeu_ps(o, acc);
    for (int k = 0; k < 8; k++) s[(size_t)k * ls] = o[k];
}
TILE_ENTRY(tile_q4_0x8_raw1, 8, 1)

Q4_0_TILE(tile_q4_0_avx2, Q4_0_X_AVX2, Q8_Y_AVX2, DOT_AVX2, -, AVX2, &tile_q4_0x8_raw1_tile)

/* Q4_0 for many tokens on AVX2: 8 weight rows, one per 32-bit lane (as ggml's repacked Q4_0 gemm), the row tile packed
   once for all its tokens (pack_q4_0x8): per block, 8 registers of 4 consecutive weights q - 8 of each row, the rows'
   -128·Σ(q - 8) and their scales. A token's block is then 8 vpmaddubsw of its activation bytes y + 128, four at a time
   broadcast to every row, against the signed weights, summed in 16 bits (each sum of two products is within
   ±255·8·2 = 4080, eight of them within 32640: exact), widened by one vpmaddwd and started from -128·Σ(q - 8): the lane
   is Σ (q - 8)·y, the exact integer the one-token kernels sum; then one fused multiply-add per (row, token),
   fma(Σ, d_x·d_y, acc), for the 8 rows at once — the one-token kernels' float step, so their bits. The 4 × 2 tile
   above spends a transposing sum per block and unpacks each block for 2 tokens only. */
typedef struct { int8_t w[8][32]; int32_t c[8]; float d[8]; } block_q4_0x8;
#define Q4_0X8_ROW_SIZE (sizeof(block_q4_0x8) / 8) /* the packed bytes per row and block */

/* rows x + r·bx for r < nr (the rest zero weights, zero scales), 8 interleaved per block */
static AVX2 void pack_q4_0x8(const void *vx, size_t bx, int nr, void *dst, int64_t n) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    block_q4_0x8 *p = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        float d[8];
        for (int r = 0; r < 8; r++)
            d[r] = r < nr ? tk_fp16_table[((const block_q4_0 *)((const char *)vx + r * bx) + b)->d] : 0.0f;
        __m256i q[4];
        rows8_quads((const char *)vx + (size_t)b * sizeof(block_q4_0) + offsetof(block_q4_0, qs), bx, nr, q);
        /* lanes of rows past nr hold zero bytes: q - 8 would make them -8, so they are masked back to zero */
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i c16 = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i lo = _mm256_and_si256(_mm256_sub_epi8(_mm256_and_si256(q[j], m4), eight), live);
            const __m256i hi = _mm256_and_si256(
                _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi32(q[j], 4), m4), eight), live);
            _mm256_storeu_si256((__m256i *)p[b].w[j], lo);
            _mm256_storeu_si256((__m256i *)p[b].w[j + 4], hi);
            c16 = _mm256_add_epi16(c16, _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8((char)0x80), lo),
                                                         _mm256_maddubs_epi16(_mm256_set1_epi8((char)0x80), hi)));
        }
        _mm256_storeu_si256((__m256i *)p[b].c, _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(c16, ones)));
        _mm256_storeu_ps(p[b].d, _mm256_loadu_ps(d));
    }
}

/* 8 rows x RN tokens from rows packed by pack_q4_0x8 */
#define Q4_0X8_TILE(NAME, RN)                                                                                 \
    static AVX2 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        (void)bx;                                                                                            \
        const block_q4_0x8 *p = vx;                                                                          \
        const __m256i ones = _mm256_set1_epi16(1);                                                           \
        __m256 acc[RN];                                                                                      \
        for (int t = 0; t < RN; t++) acc[t] = _mm256_setzero_ps();                                           \
        for (int64_t b = 0; b < n / QK; b++) {                                                               \
            uint32_t u[RN][8];                                                                               \
            float dy[RN];                                                                                    \
            q8_0_tokens_u8(vy, by, b, RN, u, dy);                                                            \
            /* read back as broadcast loads: the compiler would rebuild each from the registers by shuffles */  \
            __asm__ __volatile__("" ::: "memory");                                                           \
            const __m256i c = _mm256_loadu_si256((const __m256i *)p[b].c);                                   \
            const __m256 dx = _mm256_loadu_ps(p[b].d);                                                       \
            for (int t = 0; t < RN; t++) {                                                                   \
                __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi32((int)u[t][0]), load32(p[b].w[0]));     \
                for (int j = 1; j < 8; j++)                                                                  \
                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_set1_epi32((int)u[t][j]), load32(p[b].w[j]))); \
                const __m256i sum = _mm256_add_epi32(c, _mm256_madd_epi16(s16, ones));                       \
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dx, _mm256_set1_ps(dy[t])), acc[t]); \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < RN; t++) {                                                                       \
            float o[8];                                                                                      \
            _mm256_storeu_ps(o, acc[t]);                                                                     \
            for (int r = 0; r < 8; r++) s[(size_t)r * ls + t] = o[r];                                        \
        }                                                                                                    \
    }
Q4_0X8_TILE(tile_q4_0x8_avx2, 8)
/* 8 tokens a pass, the row tile packed once; 2 tokens by the 4 x 2 tile above, one by the one-token kernels */
PACKED_TILE_ENTRY_ROWS(tile_q4_0x8_avx2, 8, 8, Q4_0X8_ROW_SIZE, TK_Q8_0, &tile_q4_0_avx2_tile, pack_q4_0x8)
/* Q8_0 on AVX2: 3 rows x 4 tokens (4 x 2 for 2 or 3 tokens) */
LEGACY_TILE(tile_q8_0_avx2_2, block_q8_0, 4, 2, Q8_0_X_AVX2, Q8_Y_AVX2, DOT_AVX2, -, AVX2, NULL)
LEGACY_TILE(tile_q8_0_avx2, block_q8_0, 3, 4, Q8_0_X_AVX2, Q8_Y_AVX2, DOT_AVX2, -, AVX2, &tile_q8_0_avx2_2_tile)
LEGACY_TILE(tile_q8_0_vnni, block_q8_0, 4, 2, Q8_0_X_VNNI, Q8_0_Y_VNNI, Q8_0_DOT_VNNI, dpbusd_vex, VNNI, NULL)

/* ---------------------------------------------------------------------------------------------- k-quants */

AVX2 void tk_vec_dot_q2_K_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float dall = y[b].d * h2f(x[b].d), dmin = y[b].d * h2f(x[b].dmin);
        const __m128i sc = _mm_loadu_si128((const __m128i *)x[b].scales);
        const struct scales16 scl = scales16(_mm_and_si128(sc, _mm_set1_epi8(0x0F)));
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0x0F)));
        const __m256i summ = _mm256_madd_epi16(load32(y[b].bsums), mins);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(-dmin), _mm256_cvtepi32_ps(summ), acc);
        __m256i sumi = _mm256_setzero_si256();
        const int8_t *q8 = y[b].qs;
        for (int k = 0; k < 2; k++) {
            const __m256i q = load32(x[b].qs + 32 * k);
            for (int j = 0; j < 4; j++, q8 += 32) {
                __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
                __m256i p = _mm256_maddubs_epi16(v, load32(q8));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(&scl, 4 * k + j)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum8(acc);
}

AVX2 void tk_vec_dot_q3_K_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4), zero = _mm256_setzero_si256();
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = y[b].d * h2f(x[b].d);
        const struct scales16 sc = scales16(q3_scales(x[b].scales));
        const __m256i hm = load32(x[b].hmask);
        __m256i sumi = _mm256_setzero_si256();
        const int8_t *q8 = y[b].qs;
        for (int k = 0; k < 2; k++) {
            const __m256i q = load32(x[b].qs + 32 * k);
            for (int j = 0; j < 4; j++, q8 += 32) {
                const int bit = 4 * k + j;
                __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
                /* 4 where the high bit is clear: the quant is v - 4 */
                __m256i clear = _mm256_cmpeq_epi8(_mm256_and_si256(hm, _mm256_set1_epi8((char)(1 << bit))), zero);
                __m256i h4 = _mm256_and_si256(clear, four);
                const __m256i y8 = load32(q8);
                __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(v, y8), _mm256_maddubs_epi16(h4, y8));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(&sc, bit)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum8(acc);
}

/* Q5_K: per super-block the integer sums in 8 lanes (scale of each sub-block as int16 pairs), the mins' sums to one
   float: the order of ggml's AVX2 kernel, whose results this reproduces. */
static inline AVX2 void dot_q5_K(const block_q5_K *x, const block_q8_K *y, __m256 *acc, float *summs) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const float d = y->d * h2f(x->d), dmin = y->d * h2f(x->dmin);
    const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(x->scales));  /* int16 [sc0..sc7 | m0..m7] */
    *summs += q5_K_mins_term(_mm256_extracti128_si256(sm, 1), y, dmin);
    const __m256i sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
    __m256i h = load32(x->qh);
    __m256i sumi = _mm256_setzero_si256();
    const int8_t *q8 = y->qs;
    for (int j = 0; j < 4; j++, q8 += 64) {
        const __m256i q = load32(x->qs + 32 * j);
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), one), 4));
        h = _mm256_srli_epi16(h, 2);
        /* int16 scale of sub-block k in every lane: bytes 2k, 2k+1 of sc */
        const __m256i scl = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)((4 * j + 1) << 8 | (4 * j))));
        const __m256i sch = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)((4 * j + 3) << 8 | (4 * j + 2))));
        __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32(q8)), scl);
        __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32(q8 + 32)), sch);
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
    }
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
}

/* Q4_K works per sub-block: lane l of a super-block holds D_l, the exact integer dot of sub-block l's 32 quants
   with their activations, and each super-block adds
       acc = fma(d_y · xs, D, acc),  acc = fnmadd(xm, yb, acc)
   with xs_l = d_x · scale_l, xm_l = dmin_x · min_l and yb_l = d_y · (sum of sub-block l's activation quants); the
   result is hsum8(acc). The one-token kernels get D from the file's layout (8 lane-wise dots, then summed across
   lanes); the tiles further down get it straight from rows repacked so that a lane meets one sub-block (and Q8_KX
   activations), which costs one vpdpbusd per 32 products and no scale shuffles. Same D, same float operations: a
   token's results are the same alone or in a batch. (ggml's AVX2 kernel orders the float sums otherwise; the
   integer parts are the same.) The factors: q4_K_factors (dot_x86.h). */

/* lane l = the sum of p[l]'s 16 int16 lanes (pair sums of maddubs: 16 products of a nibble and an activation in
   any 8 of them stay within int16, so three rounds of hadd are exact before the two halves are added as int32) */
static inline AVX2 __m256i sum_lanes8(const __m256i p[8]) {
    const __m256i a = _mm256_hadd_epi16(_mm256_hadd_epi16(p[0], p[1]), _mm256_hadd_epi16(p[2], p[3]));
    const __m256i b = _mm256_hadd_epi16(_mm256_hadd_epi16(p[4], p[5]), _mm256_hadd_epi16(p[6], p[7]));
    const __m256i c = _mm256_hadd_epi16(a, b);
    return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(c)),
                            _mm256_cvtepi16_epi32(_mm256_extracti128_si256(c, 1)));
}

static inline AVX2 __m256 super_q4_K(const block_q4_K *x, const block_q8_K *y, __m256 acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i p[8];
    for (int j = 0; j < 4; j++) {
        const __m256i q = load32(x->qs + 32 * j);
        p[2 * j] = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), load32(y->qs + 64 * j));
        p[2 * j + 1] = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), load32(y->qs + 64 * j + 32));
    }
    __m256 xs, xm;
    q4_K_factors(x, &xs, &xm);
    const __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y->bsums),
                                      _mm_loadu_si128((const __m128i *)(y->bsums + 8)));
    const __m256 yd = _mm256_set1_ps(y->d);
    const __m256 yb = _mm256_mul_ps(yd, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(bs)));
    acc = _mm256_fmadd_ps(_mm256_mul_ps(yd, xs), _mm256_cvtepi32_ps(sum_lanes8(p)), acc);
    return _mm256_fnmadd_ps(xm, yb, acc);
}

AVX2 void tk_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) acc = super_q4_K(&x[b], &y[b], acc);
    *s = hsum8(acc);
}

AVX2 void tk_vec_dot2_q4_K_q8_K_avx2(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {
    const block_q4_K *x0 = vx, *x1 = (const block_q4_K *)((const char *)vx + bx);
    const block_q8_K *y = vy;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    for (int64_t b = 0; b < n / QK_K; b++) {
        prefetch_block(&x0[b], sizeof x0[b]);
        prefetch_block(&x1[b], sizeof x1[b]);
        acc0 = super_q4_K(&x0[b], &y[b], acc0);
        acc1 = super_q4_K(&x1[b], &y[b], acc1);
    }
    s[0] = hsum8(acc0);
    s[1] = hsum8(acc1);
}

AVX2 void tk_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_K *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int64_t b = 0; b < n / QK_K; b++) dot_q5_K(&x[b], &y[b], &acc, &summs);
    *s = hsum8(acc) + summs;
}

/* one Q6_K super-block: acc + d · (integer sums in 8 lanes) */
static inline AVX2 __m256 super_q6_K(const block_q6_K *x, const block_q8_K *y, __m256 acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    const float d = y->d * h2f(x->d);
    const __m128i sc = _mm_loadu_si128((const __m128i *)x->scales);
    /* the quants are stored plus 32: take 32·Σ scale·(sum of its 16 activations) off at the end */
    const __m256i offset = _mm256_madd_epi16(load32(y->bsums), _mm256_cvtepi8_epi16(sc));
    const struct scales16 sc16 = scales16(sc);
    __m256i sumi = _mm256_setzero_si256();
    const uint8_t *ql = x->ql, *qh = x->qh;
    const int8_t *q8 = y->qs;
    for (int h = 0; h < 2; h++, ql += 64, qh += 32, q8 += 128) {
        const __m256i l0 = load32(ql), l1 = load32(ql + 32), hb = load32(qh);
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4));
        for (int k = 0; k < 4; k++) {
            __m256i p = _mm256_maddubs_epi16(q[k], load32(q8 + 32 * k));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(&sc16, 4 * h + k)));
        }
    }
    sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(offset, 5));
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
}

AVX2 void tk_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) acc = super_q6_K(&x[b], &y[b], acc);
    *s = hsum8(acc);
}

AVX2 void tk_vec_dot2_q6_K_q8_K_avx2(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {
    const block_q6_K *x0 = vx, *x1 = (const block_q6_K *)((const char *)vx + bx);
    const block_q8_K *y = vy;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    for (int64_t b = 0; b < n / QK_K; b++) {
        prefetch_block(&x0[b], sizeof x0[b]);
        prefetch_block(&x1[b], sizeof x1[b]);
        acc0 = super_q6_K(&x0[b], &y[b], acc0);
        acc1 = super_q6_K(&x1[b], &y[b], acc1);
    }
    s[0] = hsum8(acc0);
    s[1] = hsum8(acc1);
}

/* acc + the int16 pairs of p times those of s, summed in pairs */
static inline AVX2 __m256i madd_add_avx2(__m256i acc, __m256i p, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
}



/* v[s] = the 32-bit elements s of v[0..7] (an 8 × 8 transpose) */
static inline AVX2 void transpose8_epi32(__m256i v[8]) {
    __m256i t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_epi32(v[k], v[k + 1]);
        t[k + 1] = _mm256_unpackhi_epi32(v[k], v[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_unpacklo_epi64(t[k], t[k + 2]);
        u[k + 1] = _mm256_unpackhi_epi64(t[k], t[k + 2]);
        u[k + 2] = _mm256_unpacklo_epi64(t[k + 1], t[k + 3]);
        u[k + 3] = _mm256_unpackhi_epi64(t[k + 1], t[k + 3]);
    }
    for (int c = 0; c < 4; c++) {
        v[c] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x20);
        v[c + 4] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x31);
    }
}

AVX2 void tk_pack_q4_K_avx2(const void *vx, void *dst, int64_t n) {
    const block_q4_K *x = vx;
    block_q4_K_packed *p = dst;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < n / QK_K; b++) {
        __m256i v[8];
        for (int j = 0; j < 4; j++) {
            const __m256i q = load32(x[b].qs + 32 * j);
            v[2 * j] = _mm256_and_si256(q, m4);
            v[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        }
        transpose8_epi32(v);
        for (int k = 0; k < 8; k++) _mm256_storeu_si256((__m256i *)(p[b].q + 32 * k), v[k]);
        __m256 xs, xm;
        q4_K_factors(&x[b], &xs, &xm);
        _mm256_storeu_ps(p[b].xs, xs);
        _mm256_storeu_ps(p[b].xm, xm);
    }
}



/* A (row, token) super-block's lanes D: on AVX2 the 8 steps' vpmaddubsw pair sums added in 16 bits (two products of
   a nibble and an activation byte per element, eight steps: within 8·2·15·128 = 30720, exact) and widened once, on
   AVX-VNNI one vpdpbusd a step: the same integers */
#define Q4_K_STEP_AVX2(D, w, a) (D = _mm256_add_epi16(D, _mm256_maddubs_epi16(w, a)))
#define Q4_K_END_AVX2(D) _mm256_madd_epi16(D, _mm256_set1_epi16(1))
#define Q4_K_STEP_VNNI(D, w, a) (D = dpbusd_vex(D, w, a))
#define Q4_K_END_VNNI(D) (D)

#define Q4_K_TILE(NAME, RM, RN, ATTR, STEP, END, NARROW)                                                              \
    ATTR void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {     \
        __m256 acc[RM][RN];                                                                                  \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            __m256i D[RM][RN];                                                                               \
            for (int r = 0; r < RM; r++)                                                                     \
                for (int t = 0; t < RN; t++) D[r][t] = _mm256_setzero_si256();                               \
            for (int st = 0; st < 8; st++) {                                                                 \
                __m256i w[RM];                                                                               \
                for (int r = 0; r < RM; r++) w[r] = load32(Q4_K_ROW(r, b)->q + 32 * st);                     \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m256i a = load32(Q8_KX_ROW(t, b)->qs + 32 * st);                                 \
                    for (int r = 0; r < RM; r++) STEP(D[r][t], w[r], a);                                     \
                }                                                                                            \
            }                                                                                                \
            for (int r = 0; r < RM; r++)                                                                     \
                for (int t = 0; t < RN; t++) D[r][t] = END(D[r][t]);                                         \
            for (int t = 0; t < RN; t++) {                                                                   \
                const __m256 yd = _mm256_broadcast_ss(&Q8_KX_ROW(t, b)->d), yb = _mm256_loadu_ps(Q8_KX_ROW(t, b)->yb); \
                for (int r = 0; r < RM; r++) {                                                               \
                    acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(yd, _mm256_loadu_ps(Q4_K_ROW(r, b)->xs)),      \
                                                _mm256_cvtepi32_ps(D[r][t]), acc[r][t]);                     \
                    acc[r][t] = _mm256_fnmadd_ps(_mm256_loadu_ps(Q4_K_ROW(r, b)->xm), yb, acc[r][t]);        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) s[r * ls + t] = hsum8(acc[r][t]);                                   \
    }                                                                                                        \
    PACKED_TILE_ENTRY(NAME, RM, RN, tk_pack_q4_K_avx2, sizeof(block_q4_K_packed), TK_Q8_KX, NARROW)

/* AVX2: 3 rows x 4 tokens (2 x 2 for 2 or 3 tokens; one thread, -O3, 5632 x 2048 x 128 tokens, medians of 7
   alternating: 3 x 3 54.9 GMAC/s, 3 x 4 56.4, 4 x 3 56.4) */
Q4_K_TILE(tile_q4_K_avx2_2, 2, 2, AVX2, Q4_K_STEP_AVX2, Q4_K_END_AVX2, NULL)
Q4_K_TILE(tile_q4_K_avx2, 3, 4, AVX2, Q4_K_STEP_AVX2, Q4_K_END_AVX2, &tile_q4_K_avx2_2_tile)
Q4_K_TILE(tile_q4_K_vnni, 2, 3, VNNI, Q4_K_STEP_VNNI, Q4_K_END_VNNI, NULL)


Q6_K_TILE(tile_q6_K_avx2, 2, 2, AVX2, madd_add_avx2, NULL)

/* Q6_K for many tokens on AVX2: each row's super-block unpacked once for all the tokens of its row tile (the tile
   above unpacks it for 2) into its 6-bit quants in Q6_K_TILE's register order, the scale pair of each register
   (scale_pair) and the scales widened for the -32·Σ scale·bsum term; a (row, token, register) is then one
   vpmaddubsw, one vpmaddwd and an add, the tile above's integers, and K_TILE_SCALE its float step: its bits. */
typedef struct { uint8_t q[8][32]; int16_t sp[8][16]; int16_t s16[16]; tk_half d; } block_q6_K_unpacked;

static AVX2 void pack_q6_K_avx2(const void *vx, void *dst, int64_t n) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    const block_q6_K *x = vx;
    block_q6_K_unpacked *p = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const __m128i sc = _mm_loadu_si128((const __m128i *)x[b].scales);
        const struct scales16 sc16 = scales16(sc);
        _mm256_storeu_si256((__m256i *)p[b].s16, _mm256_cvtepi8_epi16(sc));
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h, *qh = x[b].qh + 32 * h;
            const __m256i l0 = load32(ql), l1 = load32(ql + 32), hb = load32(qh);
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4)),
                _mm256_or_si256(_mm256_and_si256(l1, m4),
                                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4))};
            for (int k = 0; k < 4; k++) {
                _mm256_storeu_si256((__m256i *)p[b].q[4 * h + k], q[k]);
                _mm256_storeu_si256((__m256i *)p[b].sp[4 * h + k], scale_pair(&sc16, 4 * h + k));
            }
        }
        p[b].d = x[b].d;
    }
}

#define Q6_K_PACKED_TILE(NAME, RM, RN, NARROW)                                                                \
    static AVX2 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        __m256 acc[RM][RN];                                                                                  \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            const block_q6_K_unpacked *x[RM];                                                                \
            const block_q8_K *y[RN];                                                                         \
            __m256i sumi[RM][RN];                                                                            \
            for (int t = 0; t < RN; t++) y[t] = (const block_q8_K *)((const char *)vy + t * by) + b;        \
            for (int r = 0; r < RM; r++) {                                                                   \
                x[r] = (const block_q6_K_unpacked *)((const char *)vx + r * bx) + b;                        \
                for (int t = 0; t < RN; t++) /* -32·Σ scale·bsum, as Q6_K_TILE */                            \
                    sumi[r][t] = _mm256_sub_epi32(_mm256_setzero_si256(),                                    \
                        _mm256_slli_epi32(_mm256_madd_epi16(load32(y[t]->bsums), load32(x[r]->s16)), 5));    \
            }                                                                                                \
            for (int k = 0; k < 8; k++)                                                                      \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m256i q8 = load32(y[t]->qs + 32 * k);                                            \
                    for (int r = 0; r < RM; r++)                                                             \
                        sumi[r][t] = _mm256_add_epi32(sumi[r][t], _mm256_madd_epi16(                         \
                            _mm256_maddubs_epi16(load32(x[r]->q[k]), q8), load32(x[r]->sp[k])));             \
                }                                                                                            \
            K_TILE_SCALE(RM, RN)                                                                             \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) s[r * ls + t] = hsum8(acc[r][t]);                                   \
    }                                                                                                        \
    PACKED_TILE_ENTRY(NAME, RM, RN, pack_q6_K_avx2, sizeof(block_q6_K_unpacked), 0, NARROW)
/* 2 rows x 5 tokens a pass, the rows unpacked once; 2 to 4 tokens by the tile above (one thread, -O3, 5632 x 2048 x
   128 tokens, medians of 7 alternating: 3 x 4 43.2 GMAC/s, 2 x 5 45.6; 2 x 4, 2 x 6, 3 x 3, 4 x 3 about 3 x 4) */
Q6_K_PACKED_TILE(tile_q6_K_avx2_p, 2, 5, &tile_q6_K_avx2_tile)

/* F16 and BF16 tiles, 3 rows × RN tokens in the one-token kernels' order: W(r, i) the 8 weights of row r from
   element i as F32 and X(r, j) element j, from the packed rows (F32, converted once per row tile for all its
   tokens) or the file's; the tokens (the vec_dot_type's) converted per use. Per step, 4 conversions for 12 fused
   multiply-adds. (Tried, slower here: the tokens widened to F32 once per matrix, an activation type of their own,
   whose twice the bytes the tile then streams from L2 and L3; and row tiles in groups that stay in L2 while each
   token tile passes, no faster.) */
#define FLOAT16_TILE_AVX2(NAME, RN, ET, LOAD, TOF, W, X)                                                      \
    AVX2 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {     \
        enum { RM = 3 };                                                                                     \
        __m256 acc[RM][RN];                                                                                  \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();                                    \
        int64_t i = 0;                                                                                       \
        for (; i + 8 <= n; i += 8) {                                                                         \
            __m256 w[RM];                                                                                    \
            for (int r = 0; r < RM; r++) w[r] = W(ET, LOAD, r, i);                                           \
            for (int t = 0; t < RN; t++) {                                                                   \
                const __m256 a = LOAD(ROW16(ET, vy, by, t) + i);                                             \
                for (int r = 0; r < RM; r++) acc[r][t] = _mm256_fmadd_ps(w[r], a, acc[r][t]);                \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) {                                                                   \
                const ET *y = ROW16(ET, vy, by, t);                                                          \
                float sum = hsum8(acc[r][t]);                                                                \
                for (int64_t j = i; j < n; j++) sum += X(ET, TOF, r, j) * TOF(y[j]);                         \
                s[r * ls + t] = sum;                                                                         \
            }                                                                                                \
    }

#define PACKED_F32_ROW(r) ((const float *)((const char *)vx + (r) * bx))
#define FLOAT16_PACKED_W(ET, LOAD, r, i) _mm256_loadu_ps(PACKED_F32_ROW(r) + (i))
#define FLOAT16_PACKED_X(ET, TOF, r, j) PACKED_F32_ROW(r)[j]
#define FLOAT16_RAW_W(ET, LOAD, r, i) LOAD(ROW16(ET, vx, bx, r) + (i))
#define FLOAT16_RAW_X(ET, TOF, r, j) TOF(ROW16(ET, vx, bx, r)[j])

/* packed for many tokens; for 2 or 3, the file's rows */
#define FLOAT16_TILES_AVX2(T, ET, LOAD, TOF)                                                                  \
    FLOAT16_TILE_AVX2(tile_##T##_packed4, 4, ET, LOAD, TOF, FLOAT16_PACKED_W, FLOAT16_PACKED_X)               \
    FLOAT16_TILE_AVX2(tile_##T##_raw2, 2, ET, LOAD, TOF, FLOAT16_RAW_W, FLOAT16_RAW_X)                        \
    static const struct tk_gemm tile_##T##_raw2_tile = {tile_##T##_raw2, 3, 2, NULL, 0, 0, NULL};            \
    static const struct tk_gemm tile_##T##_avx2_tile = {tile_##T##_packed4, 3, 4, pack_##T##_avx2,            \
                                                        sizeof(float), 0, &tile_##T##_raw2_tile};

FLOAT16_TILES_AVX2(f16, tk_half, load_f16, h2f)
FLOAT16_TILES_AVX2(bf16, uint16_t, load_bf16, bf2f)

/* ---------------------------------------------------------------------------------------------- tile table */

/* per weight type, the tiles of the AVX2 and AVX-VNNI levels. Q4_0 and Q6_K take their AVX2 tiles at the AVX-VNNI
   level too: its own (4 x 2 Q4_0 rows on the file's blocks with vpdpbusd, 2 x 2 Q6_K with vpdpwssd) were slower
   than the AVX2 packed ones (Xeon, AVX-VNNI level, one thread, 1024 x 2048 x 128 tokens: Q4_0 44.8 GMAC/s against
   66.2, Q6_K 35.8 against 40.6; one token Q4_0 26.4 against 31.9). The one-token kernels' integers and float steps
   are the same at both levels, so the tiles give the bits of either (make test-kernels, level avxvnni). */
const struct tk_gemm *tk_gemm_x86(int wtype, int level) {
    static const struct tk_gemm *const T[][2] = {
        [TK_F16] = {&tile_f16_avx2_tile, &tile_f16_avx2_tile},
        [TK_BF16] = {&tile_bf16_avx2_tile, &tile_bf16_avx2_tile},
        [TK_Q4_0] = {&tile_q4_0x8_avx2_tile, &tile_q4_0x8_avx2_tile},
        [TK_Q8_0] = {&tile_q8_0_avx2_tile, &tile_q8_0_vnni_tile},
        [TK_Q4_K] = {&tile_q4_K_avx2_tile, &tile_q4_K_vnni_tile},
        [TK_Q6_K] = {&tile_q6_K_avx2_p_tile, &tile_q6_K_avx2_p_tile},
    };
    const struct tk_gemm *iq = tk_gemm_iq_x86(wtype, level);  /* the IQ types' (tiles_iq_x86.c) */
    if (iq) return iq;
    if (level == 2) return tk_gemm_avx512(wtype);
    if (wtype < 0 || wtype >= (int)(sizeof T / sizeof T[0]) || level < 0 || level > 1) return NULL;
    return T[wtype][level];
}

#endif
