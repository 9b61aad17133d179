/* What the x86 matrix kernel files share (dot_avx2.c: AVX2 and AVX-VNNI; dot_avx512.c: AVX512): the target attributes
   of the VNNI and AVX512 builds, the loads and unpackings both use, the tiles' table entries, and the tile
   generators instantiated in both (Q6_K, the Q4_K repacking). Included inside their x86 guard, after quants.h. */
#ifndef TOOLKIT_DOT_X86_H
#define TOOLKIT_DOT_X86_H

#include <math.h>
#include "simd_x86.h"

static inline AVX2 float h2f(tk_half h) { return _cvtsh_ss(h); }

static inline AVX2 __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* Σ of a Q8_0 block's 32 quants: the bytes + 128 summed by vpsadbw against zero (the -8·Σy of Q4_0's lanes) */
static inline AVX2 int q8_0_sum(const block_q8_0 *y) {
    const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(load32(y->qs), _mm256_set1_epi8((char)0x80)),
                                        _mm256_setzero_si256());
    const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
    return (int)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 32 * 128;
}

/* The Q4_0 tiles with rows in lanes (AVX2's 8, AVX512's 16): RN tokens' block b as unsigned bytes y + 128, u[t][j]
   its four-byte group j (the callers read them back as broadcast loads), and their scales dy[t] */
static inline AVX2 void q8_0_tokens_u8(const void *vy, size_t by, int64_t b, int rn, uint32_t (*u)[8], float *dy) {
    for (int t = 0; t < rn; t++) {
        const block_q8_0 *y = (const block_q8_0 *)((const char *)vy + t * by) + b;
        _mm256_storeu_si256((__m256i *)u[t], _mm256_xor_si256(load32(y->qs), _mm256_set1_epi8((char)0x80)));
        dy[t] = tk_fp16_table[y->d];
    }
}


/* Scales of groups of 16 as int16, for the products of 32 quants (two groups, one per 128-bit lane):
   sc16[0] holds scales 0..7 in both lanes, sc16[1] scales 8..15; scale_pair gives [s[2m] x8 | s[2m+1] x8]. */
struct scales16 { __m256i v[2]; };

static inline AVX2 struct scales16 scales16(__m128i sc8) {
    const __m256i w = _mm256_cvtepi8_epi16(sc8);
    struct scales16 r = {{_mm256_permute2x128_si256(w, w, 0x00), _mm256_permute2x128_si256(w, w, 0x11)}};
    return r;
}

static inline AVX2 __m256i scale_pair(const struct scales16 *s, int m) {
    const int w0 = (2 * m) & 7, w1 = (2 * m + 1) & 7;
    const __m256i sel = _mm256_setr_m128i(_mm_set1_epi16((short)((2 * w0 + 1) << 8 | 2 * w0)),
                                          _mm_set1_epi16((short)((2 * w1 + 1) << 8 | 2 * w1)));
    return _mm256_shuffle_epi8(s->v[m >> 2], sel);
}

static inline float bf2f(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline AVX2 __m256 load_f16(const tk_half *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline AVX2 __m256 load_bf16(const uint16_t *p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}


#define VNNI __attribute__((target("avx2,fma,f16c,avxvnni")))

#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

/* a 16-rows-in-lanes tile's accumulator (row r in lane r) for one token: s[r · ls] for r < 16 */
static inline AVX512 void store_rows16(float *s, size_t ls, __m512 acc) {
    float o[16];
    _mm512_storeu_ps(o, acc);
    for (int r = 0; r < 16; r++) s[r * ls] = o[r];
}

/* 16 bytes at p + r·bx of 16 rows r, transposed: q[j] lane r = row r's bytes 4j..4j+3; four 128-bit loads per
   register (lane l of z[k]: row 4l + k), two rounds of unpacks (the 16-rows-in-lanes tiles' weights, from the file) */
static inline AVX512 void rows16_quads(const char *p, size_t bx, __m512i q[4]) {
    __m512i z[4];
#define ROWS16_BYTES(r) _mm_loadu_si128((const __m128i *)(p + (size_t)(r) * bx))
    for (int k = 0; k < 4; k++) {
        z[k] = _mm512_castsi128_si512(ROWS16_BYTES(k));
        z[k] = _mm512_inserti32x4(z[k], ROWS16_BYTES(4 + k), 1);
        z[k] = _mm512_inserti32x4(z[k], ROWS16_BYTES(8 + k), 2);
        z[k] = _mm512_inserti32x4(z[k], ROWS16_BYTES(12 + k), 3);
    }
#undef ROWS16_BYTES
    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    q[0] = _mm512_unpacklo_epi64(t0, t2);
    q[1] = _mm512_unpackhi_epi64(t0, t2);
    q[2] = _mm512_unpacklo_epi64(t1, t3);
    q[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* the tile's entry for the table (its shape stated once) */
#define TILE_ENTRY(NAME, RM, RN) PACKED_TILE_ENTRY(NAME, RM, RN, NULL, 0, 0, NULL)
#define PACKED_TILE_ENTRY(NAME, RM, RN, PACK, PACK_SIZE, ACT_TYPE, NARROW)                                    \
    static const struct tk_gemm NAME##_tile = {NAME, RM, RN, PACK, PACK_SIZE, ACT_TYPE, NARROW};             \
    _Static_assert(RM <= TK_GEMM_MAX_TILE && RN <= TK_GEMM_MAX_TILE, "tile larger than tk_matmul_rows holds"); \
    _Static_assert(PACK_SIZE <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* the same for a tile whose row tiles are packed whole (struct tk_gemm's pack_rows) */
#define PACKED_TILE_ENTRY_ROWS(NAME, RM, RN, PACK_SIZE, ACT_TYPE, NARROW, PACK_ROWS)                          \
    static const struct tk_gemm NAME##_tile = {NAME, RM, RN, NULL, PACK_SIZE, ACT_TYPE, NARROW, PACK_ROWS};  \
    _Static_assert(RM <= TK_GEMM_MAX_TILE && RN <= TK_GEMM_MAX_TILE, "tile larger than tk_matmul_rows holds"); \
    _Static_assert(PACK_SIZE <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* end of a K-quant super-block: acc + y.d · x.d · (the pair's integer sums), as the one-row kernels */
#define K_TILE_SCALE(RM, RN)                                                                                  \
    for (int r = 0; r < RM; r++)                                                                             \
        for (int t = 0; t < RN; t++) {                                                                       \
            const float d = y[t]->d * h2f(x[r]->d);                                                          \
            acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);       \
        }

/* Q4_K tiles (see super_q4_K): rows repacked per super-block into the quants as bytes, reordered as Q8_KX orders
   the activations' (q[32s + 4l + i] = quant 4s + i of sub-block l), and xs, xm; then step s of a (row, token) pair is
   one vpdpbusd whose lane l gathers sub-block l, and D is ready after 8 steps. The AVX512 build holds two rows
   per 512-bit register (dot_avx512.c pack_q4_K_x2; lane for lane the 256-bit operations). */
typedef struct { uint8_t q[QK_K]; float xs[8], xm[8]; } block_q4_K_packed;

/* Q4_K/Q5_K scales and mins, unpacked with word operations: bytes [sc0..sc7, m0..m7] */
static inline AVX2 __m128i k4_scales_mins(const uint8_t q[K_SCALE_SIZE]) {
    uint32_t a, b, c;
    memcpy(&a, q, 4);
    memcpy(&b, q + 4, 4);
    memcpy(&c, q + 8, 4);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    return _mm_setr_epi32((int)(a & m6), (int)((c & m4) | ((a >> 6) & m2) << 4), (int)(b & m6),
                          (int)(((c >> 4) & m4) | ((b >> 6) & m2) << 4));
}

/* Q5_K's mins term of a super-block as ggml's AVX2 kernel forms it: -dmin · Σ_k m_k · (sum of sub-block k's 32
   activation quants), one int32 sum, one float product (mins: int16 m0..m7) */
static inline AVX2 float q5_K_mins_term(__m128i mins, const block_q8_K *y, float dmin) {
    const __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y->bsums),
                                      _mm_loadu_si128((const __m128i *)(y->bsums + 8)));
    __m128i t = _mm_madd_epi16(bs, mins);
    t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 1));
    return -dmin * (float)_mm_cvtsi128_si32(t);
}

/* a Q4_K super-block's float factors (see super_q4_K): xs_l = d · scale_l, xm_l = dmin · min_l */
static inline AVX2 void q4_K_factors(const block_q4_K *x, __m256 *xs, __m256 *xm) {
    const __m128i sm = k4_scales_mins(x->scales);  /* bytes [sc0..sc7, m0..m7] */
    *xs = _mm256_mul_ps(_mm256_set1_ps(h2f(x->d)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm)));
    *xm = _mm256_mul_ps(_mm256_set1_ps(h2f(x->dmin)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(sm, sm))));
}

#define Q4_K_ROW(r, b) ((const block_q4_K_packed *)((const char *)vx + (r) * bx) + (b))
#define Q8_KX_ROW(t, b) ((const block_q8_KX *)((const char *)vy + (t) * by) + (b))

/* Q6_K tiles: super_q6_K per (row, token), each row's quants and scales unpacked once per half super-block */
#define Q6_K_TILE(NAME, RM, RN, ATTR, MADD_ADD, NARROW)                                                                 \
    ATTR void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {     \
        const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);                                 \
        __m256 acc[RM][RN];                                                                                  \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            const block_q6_K *x[RM];                                                                         \
            const block_q8_K *y[RN];                                                                         \
            struct scales16 sc16[RM];                                                                        \
            __m256i sumi[RM][RN];                                                                            \
            for (int r = 0; r < RM; r++) {                                                                   \
                x[r] = (const block_q6_K *)((const char *)vx + r * bx) + b;                                 \
                const __m128i sc = _mm_loadu_si128((const __m128i *)x[r]->scales);                          \
                sc16[r] = scales16(sc);                                                                      \
                for (int t = 0; t < RN; t++) {                                                               \
                    if (r == 0) y[t] = (const block_q8_K *)((const char *)vy + t * by) + b;                 \
                    /* -32·Σ scale·bsum, as super_q6_K takes it off at the end (integers: order is free) */  \
                    sumi[r][t] = _mm256_sub_epi32(_mm256_setzero_si256(),                                    \
                        _mm256_slli_epi32(_mm256_madd_epi16(load32(y[t]->bsums), _mm256_cvtepi8_epi16(sc)), 5)); \
                }                                                                                            \
            }                                                                                                \
            for (int h = 0; h < 2; h++) {                                                                    \
                __m256i q[RM][4];                                                                            \
                for (int r = 0; r < RM; r++) {                                                               \
                    const uint8_t *ql = x[r]->ql + 64 * h, *qh = x[r]->qh + 32 * h;                          \
                    const __m256i l0 = load32(ql), l1 = load32(ql + 32), hb = load32(qh);                    \
                    q[r][0] = _mm256_or_si256(_mm256_and_si256(l0, m4),                                      \
                        _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));                                     \
                    q[r][1] = _mm256_or_si256(_mm256_and_si256(l1, m4),                                      \
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4));               \
                    q[r][2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),                \
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4));               \
                    q[r][3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),                \
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4));               \
                }                                                                                            \
                for (int k = 0; k < 4; k++)                                                                  \
                    for (int t = 0; t < RN; t++) {                                                           \
                        const __m256i q8 = load32(y[t]->qs + 128 * h + 32 * k);                              \
                        for (int r = 0; r < RM; r++)                                                         \
                            sumi[r][t] = MADD_ADD(sumi[r][t], _mm256_maddubs_epi16(q[r][k], q8),             \
                                                  scale_pair(&sc16[r], 4 * h + k));                          \
                    }                                                                                        \
            }                                                                                                \
            K_TILE_SCALE(RM, RN)                                                                             \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) s[r * ls + t] = hsum8(acc[r][t]);                                   \
    }                                                                                                                 \
    PACKED_TILE_ENTRY(NAME, RM, RN, NULL, 0, 0, NARROW)

/* row r of a 16-bit float matrix (ET elements) with b bytes per row */
#define ROW16(ET, v, b, r) ((const ET *)((const char *)(v) + (r) * (b)))

/* the one-token kernels' software prefetch: how far ahead and into which level (core.h) */
#define PREFETCH TK_PREFETCH_AHEAD
#define PREFETCH_HINT _MM_HINT_T1

/* Q4_K rows repacked for the tiles (dot_avx2.c), by both builds */
void tk_pack_q4_K_avx2(const void *vx, void *dst, int64_t n);

/* Q4_0's block-sum order (dot.c's dot_q4_0_q8_0), shared by both builds */
/* the lanes of four blocks summed per block: [Σv0, Σv1, Σv2, Σv3] */
static inline AVX2 __m128i block_sums4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* the lanes of eight (row, token) pairs summed per pair: [Σv0, ..., Σv7] */
static inline AVX2 __m256i block_sums8(const __m256i v[8]) {
    const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* Σ of 8 int32 lanes */
static inline AVX2 int lanes_isum(__m256i v) {
    const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i q = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
    return _mm_cvtsi128_si32(_mm_add_epi32(q, _mm_shuffle_epi32(q, 1)));
}

/* acc = fma(Σ_k, d_x(k)·d_y(k), acc) for the four blocks at x, y in order; the sums exact integers */
static inline AVX2 float q4_0_steps4(__m128i sums, const block_q4_0 *x, const block_q8_0 *y, float acc) {
    float v[4];
    _mm_storeu_ps(v, _mm_cvtepi32_ps(sums)); /* exact: |Σ| <= 32·8·128 */
    for (int k = 0; k < 4; k++) acc = fmaf(v[k], tk_fp16_table[x[k].d] * tk_fp16_table[y[k].d], acc);
    return acc;
}

/* the AVX512 tile of a weight type, NULL where there is none (dot_avx512.c) */
const struct tk_gemm *tk_gemm_avx512(int wtype);

#endif
