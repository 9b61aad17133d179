/* The prompt tiles of the IQ types with Q8_K (or Q8_K16) activations (IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S) at the
   AVX2, AVX-VNNI and AVX512-VNNI levels. Their one-token kernels (quants_iq_avx2.c, quants_iq2_avx2.c,
   quants_iq3_avx2.c, after ggml's) sum, per super-block and (row, token), eight exact int32 lanes — lane l: Σ over the
   eight sub-blocks of 32 of the sub-block's integer scale (per half of 16 for IQ2_XS/IQ2_S) times its weights
   4l..4l+3 times the activations — then add d_x·d_y times the lanes into eight float lanes with one fused
   multiply-add, and end with FACTOR times ggml's 8-lane sum. A tile reaches the same lanes another way: each row's
   super-block decoded ONCE (grid lookups, signs, scales: pack) into signed 16-bit weights already multiplied by their
   scale (|scale·w| ≤ 32·127), multiplied with 16-bit activations by vpmaddwd/vpdpwssd in pairs that fall into lane l:
   integer sums in another order, so the same integers, and the float steps are the one-token kernel's lane for lane.
   At the AVX2 and AVX-VNNI levels the grid types' rows stay bytes and the tokens' bytes are made unsigned
   (IQ_BYTES_TILE: one vpmaddubsw and one vpmaddwd and add by the scales per sub-block, or vpdpwssd); at the AVX512
   level 16 rows fill the lanes (IQ_X16_TILE; IQ1_S: two tokens' lanes per register, IQ_TILE). IQ4_XS's kernels
   sum in super-block order instead (quants_iq.c: one exact integer per super-block, then one float step): its AVX2
   and AVX-VNNI tiles sum the integers in element order (IQ_SB_TILE_K16), its AVX512 tile holds 16 rows in lanes
   (tile_iq4_xs_x16). */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "quants.h"
#include "quants_iq2.h"
#include "quants_iq3.h"
#include "quants_iq1.h"

#if defined(__x86_64__) || defined(__i386__)
#include "dot_x86.h"

/* a super-block decoded: its 256 scaled weights in the order of the tile that reads them (store_sub_block for
   IQ_TILE, element order for IQ_SB_TILE_K16); d the fp16 scale as a float */
typedef struct { int16_t w[QK_K]; float d; } block_iq_packed;
/* a super-block decoded for IQ_BYTES_TILE: its 256 signed values as bytes (element order), each sub-block's scales as
   the 16 int16 words its pair sums are multiplied by (8 of its first scale, 8 of its last), the lanes' -128·Σ scale·w
   (the start of every token's sums: the tokens come as y + 128), d the fp16 scale as a float */
typedef struct { int8_t w[QK_K]; int16_t sc[QK_K / 32][16]; int32_t c[8]; float d; } block_iq_bytes;
_Static_assert(sizeof(block_iq_bytes) <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");
/* IQ1_S's: the same, and each sub-block's scale with the sign of its shift twice (int16 pairs, for the block sums) */
typedef struct { int16_t w[QK_K]; float d; int16_t delta[16]; } block_iq1_s_packed;

/* 32 signed weights of sub-block ib (element order), times s_lo (elements 0..15) and s_hi (16..31), stored in
   IQ_TILE's order: the int16 pairs (dwords) 0, 2, .., 14 (weights 4l, 4l + 1 of lane l), then 1, 3, .., 15 */
static inline AVX2 void store_sub_block(int16_t *dst, __m256i v, int s_lo, int s_hi) {
    const __m256i lo = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), _mm256_set1_epi16((short)s_lo));
    const __m256i hi = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)), _mm256_set1_epi16((short)s_hi));
    /* each half as [its even dwords | its odd dwords] */
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i a = _mm256_permutevar8x32_epi32(lo, order), b = _mm256_permutevar8x32_epi32(hi, order);
    _mm256_storeu_si256((__m256i *)dst, _mm256_permute2x128_si256(a, b, 0x20));
    _mm256_storeu_si256((__m256i *)(dst + 16), _mm256_permute2x128_si256(a, b, 0x31));
}

/* the same, stored in element order (the tiles on Q8_K16 tokens) */
static inline AVX2 void store_sub_block_elements(int16_t *dst, __m256i v, int s_lo, int s_hi) {
    _mm256_storeu_si256((__m256i *)dst,
                        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), _mm256_set1_epi16((short)s_lo)));
    _mm256_storeu_si256((__m256i *)(dst + 16), _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)),
                                                                  _mm256_set1_epi16((short)s_hi)));
}

/* four 8-byte grid points with their ±1 sign bytes: the 32 signed values */
static inline AVX2 __m256i signed_points(uint64_t g0, uint64_t g1, uint64_t g2, uint64_t g3, uint64_t s0,
                                           uint64_t s1, uint64_t s2, uint64_t s3) {
    return _mm256_sign_epi8(_mm256_set_epi64x((long long)g3, (long long)g2, (long long)g1, (long long)g0),
                            _mm256_set_epi64x((long long)s3, (long long)s2, (long long)s1, (long long)s0));
}

/* IQ4_XS sub-block ib of x: its 32 values (element order) and its scale in *ls */
static inline AVX2 __m256i iq4_xs_sub(const block_iq4_xs *x, int ib, int *ls) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tk_iq4nl_values));
    *ls = (((x->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((x->scales_h >> 2 * ib) & 3) << 4)) - 32;
    return iq4_values32(x->qs + 16 * ib, table);
}

#define IQ2_SIGNS7(v) tk_iq2_sign_bytes[tk_iq2_ksigns[(v) & 127]]

static AVX2 void pack_iq1_s(const void *vx, void *dst, int64_t n) {
    const block_iq1_s *x = vx;
    block_iq1_s_packed *p = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        p[b].d = tk_fp16_table[x[b].d];
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const uint8_t *qs = x[b].qs + 4 * ib;
            const unsigned h = x[b].qh[ib];
            const int ls = (int)(2 * ((h >> 12) & 7) + 1);
            const __m256i v = _mm256_set_epi64x((long long)tk_iq1s_grid[qs[3] | ((h >> 1) & 0x700)],
                                                (long long)tk_iq1s_grid[qs[2] | ((h << 2) & 0x700)],
                                                (long long)tk_iq1s_grid[qs[1] | ((h << 5) & 0x700)],
                                                (long long)tk_iq1s_grid[qs[0] | ((h << 8) & 0x700)]);
            store_sub_block(p[b].w + 32 * ib, v, ls, ls);
            p[b].delta[2 * ib] = p[b].delta[2 * ib + 1] = (int16_t)(h & 0x8000 ? -ls : ls);
        }
    }
}

/* Sub-block ib of a super-block of the grid types, decoded: its 32 signed values (element order) and the scales of
   its first and last 16 (the one-token kernels' integer scales). Each type's packers below run on these. */
typedef __m256i (*iq_sub_fn)(const void *block, int ib, int *s_lo, int *s_hi);

static inline AVX2 __m256i iq2_xxs_sub(const void *block, int ib, int *s_lo, int *s_hi) {
    const block_iq2_xxs *x = block;
    uint32_t aux[2];
    memcpy(aux, x->qs + 4 * ib, 8);
    *s_lo = *s_hi = (int)(2 * (aux[1] >> 28) + 1);
    return signed_points(tk_iq2xxs_grid[aux[0] & 255], tk_iq2xxs_grid[(aux[0] >> 8) & 255],
                         tk_iq2xxs_grid[(aux[0] >> 16) & 255], tk_iq2xxs_grid[aux[0] >> 24], IQ2_SIGNS7(aux[1]),
                         IQ2_SIGNS7(aux[1] >> 7), IQ2_SIGNS7(aux[1] >> 14), IQ2_SIGNS7(aux[1] >> 21));
}

static inline AVX2 __m256i iq2_xs_sub(const void *block, int ib, int *s_lo, int *s_hi) {
    const block_iq2_xs *x = block;
    const uint16_t *q2 = x->qs + 4 * ib;
    *s_lo = 2 * (x->scales[ib] & 0xF) + 1;
    *s_hi = 2 * (x->scales[ib] >> 4) + 1;
    return signed_points(tk_iq2xs_grid[q2[0] & 511], tk_iq2xs_grid[q2[1] & 511], tk_iq2xs_grid[q2[2] & 511],
                         tk_iq2xs_grid[q2[3] & 511], IQ2_SIGNS7(q2[0] >> 9), IQ2_SIGNS7(q2[1] >> 9),
                         IQ2_SIGNS7(q2[2] >> 9), IQ2_SIGNS7(q2[3] >> 9));
}

static inline AVX2 __m256i iq2_s_sub(const void *block, int ib, int *s_lo, int *s_hi) {
    const block_iq2_s *x = block;
    const uint8_t *qs = x->qs + 4 * ib;
    const unsigned h = x->qh[ib];
    uint32_t sw;
    memcpy(&sw, x->qs + QK_K / 8 + 4 * ib, 4);
    *s_lo = 2 * (x->scales[ib] & 0xF) + 1;
    *s_hi = 2 * (x->scales[ib] >> 4) + 1;
    return negate_bits32(_mm256_set_epi64x((long long)tk_iq2s_grid[qs[3] | ((h << 2) & 0x300)],
                                           (long long)tk_iq2s_grid[qs[2] | ((h << 4) & 0x300)],
                                           (long long)tk_iq2s_grid[qs[1] | ((h << 6) & 0x300)],
                                           (long long)tk_iq2s_grid[qs[0] | ((h << 8) & 0x300)]),
                         sw);
}

static inline AVX2 __m256i iq3_xxs_sub(const void *block, int ib, int *s_lo, int *s_hi) {
    const block_iq3_xxs *x = block;
    const uint8_t *q3 = x->qs + 8 * ib;
    uint32_t w;
    memcpy(&w, x->qs + QK_K / 4 + 4 * ib, 4);
    int idx[8];
    for (int j = 0; j < 8; j++) idx[j] = q3[j];
    const __m256i sign = _mm256_set_epi64x(
        (long long)tk_iq3_even_signs[w >> 21 & 127], (long long)tk_iq3_even_signs[w >> 14 & 127],
        (long long)tk_iq3_even_signs[w >> 7 & 127], (long long)tk_iq3_even_signs[w & 127]);
    *s_lo = *s_hi = (int)(2 * (w >> 28) + 1);
    return _mm256_sign_epi8(grid8(tk_iq3xxs_grid, idx), sign);
}

static inline AVX2 __m256i iq3_s_sub(const void *block, int ib, int *s_lo, int *s_hi) {
    const block_iq3_s *x = block;
    uint32_t sw;
    memcpy(&sw, x->signs + 4 * ib, 4);
    *s_lo = *s_hi = 2 * ((x->scales[ib / 2] >> 4 * (ib % 2)) & 0xF) + 1;
    return negate_bits32(grid8_9bit(tk_iq3s_grid, x->qs + 8 * ib, x->qh[ib]), sw);
}

/* every block of these types starts with its fp16 d */
_Static_assert(offsetof(block_iq2_xxs, d) == 0 && offsetof(block_iq2_xs, d) == 0 && offsetof(block_iq2_s, d) == 0 &&
               offsetof(block_iq3_xxs, d) == 0 && offsetof(block_iq3_s, d) == 0, "d first");

/* each sub-block of a row of blocks of `size` bytes, decoded by sub, handed to put with its block's number and d as a
   float (both inlined as constants) */
typedef void (*iq_put_fn)(void *dst, int64_t b, float d, int ib, __m256i v, int lo, int hi);
static inline __attribute__((always_inline)) AVX2 void pack_subs(const void *vx, void *dst, int64_t n, size_t size,
                                                                 iq_sub_fn sub, iq_put_fn put) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const char *x = (const char *)vx + (size_t)b * size;
        const float d = tk_fp16_table[*(const tk_half *)x];
        for (int ib = 0; ib < QK_K / 32; ib++) {
            int lo, hi;
            const __m256i v = sub(x, ib, &lo, &hi);
            put(dst, b, d, ib, v, lo, hi);
        }
    }
}

/* for IQ_BYTES_TILE: the values, the scales as the madd operand, and the lanes' -128·Σ scale·w summed over the
   sub-blocks so far */
static inline AVX2 void put_bytes(void *dst, int64_t b, float d, int ib, __m256i v, int lo, int hi) {
    block_iq_bytes *p = (block_iq_bytes *)dst + b;
    const __m256i sc = _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
    const __m256i c = ib ? load32(p->c) : _mm256_setzero_si256();
    p->d = d;
    _mm256_storeu_si256((__m256i *)(p->w + 32 * ib), v);
    _mm256_storeu_si256((__m256i *)p->sc[ib], sc);
    _mm256_storeu_si256((__m256i *)p->c,
                        _mm256_sub_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8((char)0x80), v), sc)));
}
#define IQ_PACK(T, BLOCK)                                                                                     \
    static AVX2 void pack_##T##_bytes(const void *vx, void *dst, int64_t n) {                                 \
        pack_subs(vx, dst, n, sizeof(BLOCK), T##_sub, put_bytes);                                            \
    }
IQ_PACK(iq2_xxs, block_iq2_xxs)
IQ_PACK(iq2_xs, block_iq2_xs)
IQ_PACK(iq2_s, block_iq2_s)
IQ_PACK(iq3_xxs, block_iq3_xxs)
IQ_PACK(iq3_s, block_iq3_s)

/* row r's super-block b, in the packed type the tile declares as iq_block */
#define IQ_ROW(r, b) ((const iq_block *)((const char *)vx + (r) * bx) + (b))
#define Q8_K_ROW(t, b) ((const block_q8_K *)((const char *)vy + (t) * by) + (b))

/* RM rows × RN tokens (RN even: token 2p in lanes 0-7 of the pair's registers, 2p + 1 in lanes 8-15). Per
   sub-block, each token's 32 activations widened to 16 bits once for the RM rows and split into the pair's
   dwords 0, 2, .., 14 (activations 4l, 4l + 1) and 1, 3, .., 15 (4l + 2, 4l + 3), each against the packed row's
   matching half broadcast to both tokens. With DELTA (IQ1_S: BLOCK block_iq1_s_packed), also the kernel's second
   sum per super-block, Σ of each sub-block's ±scale times its activations' sum, from the Q8_K block sums: lanes of a
   vpdpwssd summed in each token's half, then the kernel's fused multiply-add of d into a second accumulator, and
   the result fmaf(IQ1_DELTA, that, the lanes' sum). */
#define IQ_TILE(NAME, RM, RN, FACTOR, BLOCK, DELTA)                                                           \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        typedef BLOCK iq_block;                                                                              \
        enum { P = RN / 2 };                                                                                 \
        __m512 acc1[RM][P];                                                                                  \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int p = 0; p < P; p++) acc1[r][p] = _mm512_setzero_ps();                                    \
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);  \
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));                                   \
        __m512 acc[RM][P];                                                                                   \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int p = 0; p < P; p++) acc[r][p] = _mm512_setzero_ps();                                     \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            __m512i sum[RM][P];                                                                              \
            for (int r = 0; r < RM; r++)                                                                     \
                for (int p = 0; p < P; p++) sum[r][p] = _mm512_setzero_si512();                              \
            for (int ib = 0; ib < QK_K / 32; ib++) {                                                         \
                __m512i wa[RM], wb[RM];                                                                      \
                for (int r = 0; r < RM; r++) {                                                               \
                    const int16_t *w = IQ_ROW(r, b)->w + 32 * ib;                                            \
                    wa[r] = _mm512_broadcast_i64x4(load32(w));                                               \
                    wb[r] = _mm512_broadcast_i64x4(load32(w + 16));                                          \
                }                                                                                            \
                for (int p = 0; p < P; p++) {                                                                \
                    const __m512i y0 = _mm512_cvtepi8_epi16(load32(Q8_K_ROW(2 * p, b)->qs + 32 * ib));       \
                    const __m512i y1 = _mm512_cvtepi8_epi16(load32(Q8_K_ROW(2 * p + 1, b)->qs + 32 * ib));   \
                    const __m512i ya = _mm512_permutex2var_epi32(y0, even, y1);                              \
                    const __m512i yb = _mm512_permutex2var_epi32(y0, odd, y1);                               \
                    for (int r = 0; r < RM; r++)                                                             \
                        sum[r][p] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sum[r][p], wa[r], ya), wb[r], yb); \
                }                                                                                            \
            }                                                                                                \
            for (int p = 0; p < P; p++) {                                                                    \
                const __m512 dy = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(Q8_K_ROW(2 * p, b)->d),         \
                                                       _mm512_set1_ps(Q8_K_ROW(2 * p + 1, b)->d));           \
                const __m512i bs = DELTA ? _mm512_inserti64x4(_mm512_castsi256_si512(load32(Q8_K_ROW(2 * p, b)->bsums)), \
                                                              load32(Q8_K_ROW(2 * p + 1, b)->bsums), 1)      \
                                         : _mm512_setzero_si512();                                           \
                for (int r = 0; r < RM; r++) {                                                               \
                    const __m512 d = _mm512_mul_ps(_mm512_set1_ps(IQ_ROW(r, b)->d), dy);                     \
                    acc[r][p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum[r][p]), acc[r][p]);                \
                    if (DELTA) {                                                                             \
                        __m512i v = _mm512_dpwssd_epi32(_mm512_setzero_si512(),                              \
                                                        _mm512_broadcast_i64x4(load32(DELTA_OF(IQ_ROW(r, b)))), bs); \
                        v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));                     \
                        v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));                     \
                        v = _mm512_add_epi32(v, _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(2, 3, 0, 1)));        \
                        acc1[r][p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(v), acc1[r][p]);                  \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int p = 0; p < P; p++) {                                                                    \
                const __m256 lo = _mm512_castps512_ps256(acc[r][p]);                                         \
                const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r][p]), 1));  \
                float a1[16];                                                                                \
                _mm512_storeu_ps(a1, acc1[r][p]);                                                            \
                s[r * ls + 2 * p] = DELTA ? fmaf(IQ1_DELTA, a1[0], hsum8(lo)) : FACTOR * hsum8(lo);          \
                s[r * ls + 2 * p + 1] = DELTA ? fmaf(IQ1_DELTA, a1[8], hsum8(hi)) : FACTOR * hsum8(hi);      \
            }                                                                                                \
    }

/* IQ4_NL (blocks of 32, Q8_0 activations): its one-token kernel (quants_iq_avx2.c) adds each block's eight exact lanes
   (lane l: values 4l..4l+3 times the activations) times d_x·d_y into one of two float accumulators, even blocks and
   odd ones, sums their lanes, then adds an odd last block in scalar. The tile's rows are packed per block into the
   signed values, their -128·Σ of each four and d as a float; per (row, token pair) a vpdpbusd of the activations
   + 128 gives the same lanes, and the float steps are the kernel's. */
typedef struct { int8_t v[QK]; int32_t c[8]; float d; } block_iq4_nl_packed;

static AVX2 void pack_iq4_nl(const void *vx, void *dst, int64_t n) {
    const block_iq4_nl *x = vx;
    block_iq4_nl_packed *p = dst;
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tk_iq4nl_values));
    for (int64_t b = 0; b < n / QK; b++) {
        const __m256i v = iq4_values32(x[b].qs, table);
        /* 128·(v0 + v1) fits 16 bits for values ≥ -127 */
        const __m256i c = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8((char)0x80), v), _mm256_set1_epi16(1));
        _mm256_storeu_si256((__m256i *)p[b].v, v);
        _mm256_storeu_si256((__m256i *)p[b].c, _mm256_sub_epi32(_mm256_setzero_si256(), c));
        p[b].d = tk_fp16_table[x[b].d];
    }
}

#define NL_ROW(r, b) ((const block_iq4_nl_packed *)((const char *)vx + (r) * bx) + (b))
#define Q8_0_ROW(t, b) ((const block_q8_0 *)((const char *)vy + (t) * by) + (b))

/* lanes of block b for each (row, token pair): Σ4 v·y */
#define NL_LANES(RM, P, b, lanes)                                                                             \
    do {                                                                                                     \
        __m512i w_[RM], c_[RM];                                                                              \
        for (int r = 0; r < RM; r++) {                                                                       \
            w_[r] = _mm512_broadcast_i64x4(load32(NL_ROW(r, b)->v));                                         \
            c_[r] = _mm512_broadcast_i64x4(load32(NL_ROW(r, b)->c));                                         \
        }                                                                                                    \
        for (int p = 0; p < P; p++) {                                                                        \
            const __m512i a_ = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(                    \
                load32(Q8_0_ROW(2 * p, b)->qs)), load32(Q8_0_ROW(2 * p + 1, b)->qs), 1), _mm512_set1_epi8((char)0x80)); \
            for (int r = 0; r < RM; r++) lanes[r][p] = _mm512_dpbusd_epi32(c_[r], a_, w_[r]);                 \
        }                                                                                                    \
    } while (0)

#define NL_DXDY(r, p, b)                                                                                      \
    _mm512_mul_ps(_mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(tk_fp16_table[Q8_0_ROW(2 * (p), b)->d]),       \
                                       _mm512_set1_ps(tk_fp16_table[Q8_0_ROW(2 * (p) + 1, b)->d])),         \
                  _mm512_set1_ps(NL_ROW(r, b)->d))

#define IQ4_NL_TILE(NAME, RM, RN)                                                                             \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        enum { P = RN / 2 };                                                                                 \
        const int64_t nb = n / QK;                                                                           \
        __m512 acc[2][RM][P];                                                                                \
        __m512i lanes[RM][P];                                                                                \
        for (int k = 0; k < 2; k++)                                                                          \
            for (int r = 0; r < RM; r++)                                                                     \
                for (int p = 0; p < P; p++) acc[k][r][p] = _mm512_setzero_ps();                              \
        int64_t b = 0;                                                                                       \
        for (; b + 1 < nb; b += 2)                                                                           \
            for (int k = 0; k < 2; k++) {                                                                    \
                NL_LANES(RM, P, b + k, lanes);                                                               \
                for (int r = 0; r < RM; r++)                                                                 \
                    for (int p = 0; p < P; p++)                                                              \
                        acc[k][r][p] = _mm512_fmadd_ps(NL_DXDY(r, p, b + k), _mm512_cvtepi32_ps(lanes[r][p]),   \
                                                       acc[k][r][p]);                                        \
            }                                                                                                \
        if (b < nb) NL_LANES(RM, P, b, lanes);                                                               \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int p = 0; p < P; p++) {                                                                    \
                const __m512 a = _mm512_add_ps(acc[0][r][p], acc[1][r][p]);                                  \
                float sum[2] = {hsum8(_mm512_castps512_ps256(a)),                                            \
                                hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)))};    \
                if (b < nb) {                                                                                \
                    int32_t l[16];                                                                           \
                    _mm512_storeu_si512(l, lanes[r][p]);                                                     \
                    for (int k = 0; k < 2; k++) {                                                            \
                        int sumi = 0;                                                                        \
                        for (int j = 0; j < 8; j++) sumi += l[8 * k + j];                                    \
                        sum[k] += tk_fp16_table[Q8_0_ROW(2 * p + k, b)->d] * NL_ROW(r, b)->d * sumi;         \
                    }                                                                                        \
                }                                                                                            \
                s[r * ls + 2 * p] = sum[0];                                                                  \
                s[r * ls + 2 * p + 1] = sum[1];                                                              \
            }                                                                                                \
    }

IQ4_NL_TILE(tile_iq4_nl, 4, 4)

/* IQ4_NL at the AVX2 level: RM rows x RN tokens on the same packed rows, each (row, token) block's lanes by the
   one-token kernel's sign trick (|v| from the row, once per block for the RN tokens) and its float steps: two
   accumulators (even and odd blocks), their sum's hsum8, an odd last block in scalar */
#define IQ4_NL_TILE_AVX2(NAME, RM, RN)                                                                        \
    static AVX2 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        const int64_t nb = n / QK;                                                                           \
        const __m256i one = _mm256_set1_epi16(1);                                                            \
        __m256 acc[2][RM][RN];                                                                               \
        for (int k = 0; k < 2; k++)                                                                          \
            for (int r = 0; r < RM; r++)                                                                     \
                for (int t = 0; t < RN; t++) acc[k][r][t] = _mm256_setzero_ps();                             \
        int64_t b = 0;                                                                                       \
        for (; b + 1 < nb; b += 2)                                                                           \
            for (int k = 0; k < 2; k++) {                                                                    \
                __m256i w[RM], u[RM];                                                                        \
                for (int r = 0; r < RM; r++) {                                                               \
                    w[r] = load32(NL_ROW(r, b + k)->v);                                                      \
                    u[r] = _mm256_sign_epi8(w[r], w[r]);                                                     \
                }                                                                                            \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m256i a = load32(Q8_0_ROW(t, b + k)->qs);                                        \
                    const float dy = tk_fp16_table[Q8_0_ROW(t, b + k)->d];                                   \
                    for (int r = 0; r < RM; r++)                                                             \
                        acc[k][r][t] = _mm256_fmadd_ps(                                                      \
                            _mm256_set1_ps(dy * NL_ROW(r, b + k)->d),                                        \
                            _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u[r], _mm256_sign_epi8(a, w[r])), one)), \
                            acc[k][r][t]);                                                                   \
                }                                                                                            \
            }                                                                                                \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) {                                                                   \
                float sum = hsum8(_mm256_add_ps(acc[0][r][t], acc[1][r][t]));                                \
                if (b < nb) {                                                                                \
                    int sumi = 0;                                                                            \
                    for (int j = 0; j < QK; j++) sumi += NL_ROW(r, b)->v[j] * Q8_0_ROW(t, b)->qs[j];         \
                    sum += tk_fp16_table[Q8_0_ROW(t, b)->d] * NL_ROW(r, b)->d * sumi;                        \
                }                                                                                            \
                s[r * ls + t] = sum;                                                                         \
            }                                                                                                \
    }
/* 3 x 2 (one thread, -O3, 5632 x 2048 x 128 tokens, medians of 5 alternating: 30.0 GMAC/s; 2 x 2 29.2, 2 x 4 28.9;
   the one-token kernel per (row, token) before: 20.9) */
IQ4_NL_TILE_AVX2(tile_iq4_nl_avx2, 3, 2)
static const struct tk_gemm iq4_nl_avx2_tile = {tile_iq4_nl_avx2, 3, 2, pack_iq4_nl, sizeof(block_iq4_nl_packed), TK_Q8_0,
                                                NULL};

/* IQ4_XS at the AVX512 level: 16 weight rows, one per 32-bit lane, in the one-token kernel's super-block order
   (quants_iq.c). A row tile is packed once for all its tokens (pack_iq4_xs_x16): per super-block and sub-block, 8
   registers of 4 consecutive values + 128 (unsigned bytes) of each row, the rows' sub-block scales, and their d. A
   token's sub-block is then 8 vpdpbusd against its own activation bytes, four at a time broadcast to every row,
   starting from -128·Σ of its 32 activations (from the Q8_K block sums): the exact Σ value·q8 of each row; times
   the rows' scales (vpmulld) into the super-block's integer, then the kernel's float step for the 16 rows at once. */
typedef struct { uint8_t w[QK_K / 32][8][64]; int32_t ls[QK_K / 32][16]; float d[16]; } block_iq4_xs_x16;
#define IQ4_XS_X16_ROW_SIZE (sizeof(block_iq4_xs_x16) / 16) /* the packed bytes per row and super-block */

/* rows x + r·bx for r < nr (the rest zero scales and d), 16 interleaved per super-block, gathered from the file */
static AVX512 void pack_iq4_xs_x16(const void *vx, size_t bx, int nr, void *dst, int64_t n) {
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)bx));
    const __m512i zero = _mm512_setzero_si512(), m4 = _mm512_set1_epi8(0x0F);
    const __m512i table = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tk_iq4nl_values)),
                                           _mm512_set1_epi8((char)0x80));
    block_iq4_xs_x16 *p = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_iq4_xs *x = (const block_iq4_xs *)vx + b;
        for (int ib = 0; ib < QK_K / 32; ib++) {
            /* bytes 4j..4j+3 of the sub-block's qs: elements 4j.. in the low nibbles, 16 + 4j.. in the high ones (a
               whole tile loaded and transposed, a partial one gathered: no row past nr is read) */
            __m512i q4[4];
            if (nr == 16) rows16_quads((const char *)(x->qs + 16 * ib), bx, q4);
            else
                for (int j = 0; j < 4; j++)
                    q4[j] = _mm512_mask_i32gather_epi32(zero, live, rows, x->qs + 16 * ib + 4 * j, 1);
            for (int j = 0; j < 4; j++) {
                const __m512i q = q4[j];
                _mm512_storeu_si512(p[b].w[ib][j], _mm512_shuffle_epi8(table, _mm512_and_si512(q, m4)));
                _mm512_storeu_si512(p[b].w[ib][j + 4],
                                    _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi32(q, 4), m4)));
            }
        }
        /* d and scales_h: the word at each row's block; scales_l: the next */
        const __m512i dh = _mm512_mask_i32gather_epi32(zero, live, rows, &x->d, 1);
        const __m512i sl = _mm512_mask_i32gather_epi32(zero, live, rows, x->scales_l, 1);
        const __m512i m15 = _mm512_set1_epi32(15), m3 = _mm512_set1_epi32(3);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const __m512i lo = _mm512_and_si512(_mm512_srl_epi32(sl, _mm_cvtsi32_si128(4 * ib)), m15);
            const __m512i hi = _mm512_and_si512(_mm512_srl_epi32(dh, _mm_cvtsi32_si128(16 + 2 * ib)), m3);
            const __m512i ls = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
            _mm512_storeu_si512(p[b].ls[ib], _mm512_maskz_mov_epi32(live, ls));
        }
        _mm512_storeu_ps(p[b].d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dh)));
    }
}

/* 16 rows x RN tokens from rows packed by pack_iq4_xs_x16 */
#define IQ4_XS_X16_TILE(NAME, RN)                                                                             \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        (void)bx;                                                                                            \
        const block_iq4_xs_x16 *p = vx;                                                                      \
        __m512 acc[RN];                                                                                      \
        for (int t = 0; t < RN; t++) acc[t] = _mm512_setzero_ps();                                           \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            const block_q8_K *y[RN];                                                                         \
            int32_t corr[RN][QK_K / 32];                                                                     \
            for (int t = 0; t < RN; t++) {                                                                   \
                y[t] = Q8_K_ROW(t, b);                                                                       \
                _mm256_storeu_si256((__m256i *)corr[t],                                                      \
                                    _mm256_madd_epi16(load32(y[t]->bsums), _mm256_set1_epi16(-128)));        \
            }                                                                                                \
            /* read back as broadcast loads */                                                               \
            __asm__ __volatile__("" ::: "memory");                                                           \
            __m512i isum[RN];                                                                                \
            for (int t = 0; t < RN; t++) isum[t] = _mm512_setzero_si512();                                   \
            for (int ib = 0; ib < QK_K / 32; ib++) {                                                         \
                __m512i raw[RN];                                                                             \
                for (int t = 0; t < RN; t++) raw[t] = _mm512_set1_epi32(corr[t][ib]);                        \
                for (int g = 0; g < 8; g++) {                                                                \
                    const __m512i w = _mm512_loadu_si512(p[b].w[ib][g]);                                     \
                    for (int t = 0; t < RN; t++) {                                                           \
                        int32_t a;                                                                           \
                        memcpy(&a, y[t]->qs + 32 * ib + 4 * g, 4);                                           \
                        raw[t] = _mm512_dpbusd_epi32(raw[t], w, _mm512_set1_epi32(a));                       \
                    }                                                                                        \
                }                                                                                            \
                const __m512i sc = _mm512_loadu_si512(p[b].ls[ib]);                                          \
                for (int t = 0; t < RN; t++) isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(raw[t], sc)); \
            }                                                                                                \
            const __m512 dx = _mm512_loadu_ps(p[b].d);                                                       \
            for (int t = 0; t < RN; t++)                                                                     \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dx, _mm512_set1_ps(y[t]->d)),  \
                                         acc[t]);                                                            \
        }                                                                                                    \
        for (int t = 0; t < RN; t++) store_rows16(s + t, ls, acc[t]);                                        \
    }
IQ4_XS_X16_TILE(tile_iq4_xs_x16_2, 2)
IQ4_XS_X16_TILE(tile_iq4_xs_x16_4, 4)
IQ4_XS_X16_TILE(tile_iq4_xs_x16_8, 8)
/* 8 tokens a pass; 4 or 2 for a few generating sequences */
#define IQ4_XS_X16_ENTRY(NAME, RN, NARROW)                                                                    \
    static const struct tk_gemm NAME##_tile = {.fn = NAME, .rows = 16, .cols = RN, .pack_size = IQ4_XS_X16_ROW_SIZE, \
                                               .act_type = TK_Q8_K, .narrow = NARROW, .pack_rows = pack_iq4_xs_x16};
IQ4_XS_X16_ENTRY(tile_iq4_xs_x16_2, 2, NULL)
IQ4_XS_X16_ENTRY(tile_iq4_xs_x16_4, 4, &tile_iq4_xs_x16_2_tile)
IQ4_XS_X16_ENTRY(tile_iq4_xs_x16_8, 8, &tile_iq4_xs_x16_4_tile)
_Static_assert(IQ4_XS_X16_ROW_SIZE <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* The grid types' AVX512 tiles: the one-token kernels' lanes with 16 rows in lanes. A row tile is packed once for all
   its tokens (the 16-bit scaled weights, decoded by the types' *_sub), so that register m of sub-block ib holds an int16
   pair of that sub-block of each of the 16 rows (m < 8: weights 4m, 4m + 1; m ≥ 8: 4(m - 8) + 2, + 3). The tokens come
   as Q8_K16 (their Q8_K quants widened to 16 bits once per matrix); lane l of the one-token kernel is then, for the 16
   rows at once, Σ over the eight sub-blocks of vpdpwssd of registers l and 8 + l with the token's activation pairs
   (4l, 4l + 1), (4l + 2, 4l + 3) broadcast: the same exact integers (32 products per instruction and no shuffle, where
   the 4 × 6 tiles they replace spent two shuffles of activations per eight: 1.3× faster in IQ2_M's prompt); then the
   kernel's fused multiply-add of d_x·d_y per lane and super-block, and FACTOR times ggml's 8-lane sum, 16 rows at
   once. A lanes-free order would let vpdpbusd add 64 products per instruction (llama.cpp's tiled path), but the
   one-token kernels keep ggml's vec_dot order, whose logits tests/test_runtime.py holds to 1e-2 (in super-block order,
   IQ2_S moved them by 2.3e-2 and changed greedy tokens there). */
typedef struct { int16_t w[QK_K / 32][16][32]; float d[16]; } block_iq_x16;
#define IQ_X16_ROW_SIZE (sizeof(block_iq_x16) / 16) /* the packed bytes per row and super-block */
_Static_assert(IQ_X16_ROW_SIZE <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* A super-block of a grid type decoded whole: its 256 values times their scales, 16 bits, element order (what the
   sub-block decoder gives 32 at a time, widened and scaled). */
typedef void (*iq_super_fn)(const void *block, int16_t *w);

/* IQ2_S's, in lanes: the 32 grid indices (qs[j] and bits 2i, 2i + 1 of qh[ib], j = 4·ib + i) gathered 8 at a time,
   the sign bits (one per element, in element order) as byte masks, the scales' 16 halves widened once and spread per
   sub-block. The same integers as iq2_s_sub's 32 at a time (the tiles' bit tests, test_matmul). TinyLlama-shaped
   IQ2_M, 2 threads, 128-token prompt, alternating builds: 188-190 -> 194-197 tok/s (the scalar decoding was 10% of it). */
static inline AVX512 void iq2_s_super(const void *block, int16_t *w) {
    const block_iq2_s *x = block;
    const __m512i qh = _mm512_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)x->qh));
    const __m512i shift = _mm512_setr_epi32(8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2);
    __m512i idx[2];
    for (int h = 0; h < 2; h++) {
        const __m512i ib = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        const __m512i high = _mm512_permutexvar_epi32(_mm512_add_epi32(ib, _mm512_set1_epi32(4 * h)), qh);
        idx[h] = _mm512_or_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x->qs + 16 * h))),
                                 _mm512_and_si512(_mm512_sllv_epi32(high, shift), _mm512_set1_epi32(0x300)));
    }
    /* the 16 scales 2·s + 1 in element order (sub-block ib: halves 2·ib, 2·ib + 1), as words */
    const __m128i sc = _mm_loadl_epi64((const __m128i *)x->scales), nib = _mm_set1_epi8(0xF);
    const __m128i halves = _mm_unpacklo_epi8(_mm_and_si128(sc, nib), _mm_and_si128(_mm_srli_epi16(sc, 4), nib));
    const __m512i scales = _mm512_castsi256_si512(
        _mm256_add_epi16(_mm256_slli_epi16(_mm256_cvtepu8_epi16(halves), 1), _mm256_set1_epi16(1)));
    const __m512i pick = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(1), 1);
    for (int q = 0; q < 4; q++) {
        const __m256i points = q % 2 ? _mm512_extracti64x4_epi64(idx[q / 2], 1) : _mm512_castsi512_si256(idx[q / 2]);
        __m512i v = _mm512_i32gather_epi64(points, (const void *)tk_iq2s_grid, 8);
        uint64_t signs;
        memcpy(&signs, x->qs + QK_K / 8 + 8 * q, 8);
        v = _mm512_mask_sub_epi8(v, (__mmask64)signs, _mm512_setzero_si512(), v);
        for (int k = 0; k < 2; k++) {
            const int ib = 2 * q + k;
            const __m512i scale = _mm512_permutexvar_epi16(_mm512_add_epi16(pick, _mm512_set1_epi16((short)(2 * ib))),
                                                           scales);
            const __m256i half = k ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v);
            _mm512_storeu_si512(w + 32 * ib, _mm512_mullo_epi16(_mm512_cvtepi8_epi16(half), scale));
        }
    }
}

/* rows x + r·bx for r < nr (blocks of `size` bytes): each super-block decoded by `super`, or when NULL sub-block by
   sub-block by `sub`, widened and scaled in element order (dword k: elements 2k, 2k + 1), the 16 rows then transposed
   into the registers (register m takes dword 2m for m < 8, 2(m - 8) + 1 after); dead rows zero; sub and super
   inlined as constants */
static inline __attribute__((always_inline)) AVX512 void pack_rows_x16(const void *vx, size_t bx, int nr, void *dst,
                                                                       int64_t n, size_t size, iq_sub_fn sub,
                                                                       iq_super_fn super) {
    block_iq_x16 *p = dst;
    int16_t w[16][QK_K];
    memset(w + nr, 0, (size_t)(16 - nr) * sizeof w[0]); /* the dead rows; each live one is written whole per block */
    for (int64_t b = 0; b < n / QK_K; b++) {
        memset(p[b].d, 0, sizeof p[b].d);
        for (int r = 0; r < nr; r++) {
            const char *x = (const char *)vx + (size_t)r * bx + (size_t)b * size;
            /* 16 streams from memory, too many for the hardware prefetchers to follow */
            _mm_prefetch(x + 4 * size, _MM_HINT_T0);
            _mm_prefetch(x + 4 * size + 64, _MM_HINT_T0);
            p[b].d[r] = tk_fp16_table[*(const tk_half *)x];
            if (super) {
                super(x, w[r]);
                continue;
            }
            for (int ib = 0; ib < QK_K / 32; ib++) {
                int lo, hi;
                const __m256i v = sub(x, ib, &lo, &hi);
                const __m512i scale =
                    _mm512_inserti64x4(_mm512_set1_epi16((short)lo), _mm256_set1_epi16((short)hi), 1);
                _mm512_storeu_si512(w[r] + 32 * ib, _mm512_mullo_epi16(_mm512_cvtepi8_epi16(v), scale));
            }
        }
        for (int ib = 0; ib < QK_K / 32; ib++)
            for (int q = 0; q < 4; q++) {
                __m512i d4[4];
                rows16_quads((const char *)(w[0] + 32 * ib) + 16 * q, sizeof w[0], d4);
                for (int j = 0; j < 4; j++) {
                    const int k = 4 * q + j;
                    _mm512_storeu_si512(p[b].w[ib][k % 2 ? 8 + k / 2 : k / 2], d4[j]);
                }
            }
    }
}

/* acc + Σ pairs of w's 16-bit lanes times the pair at p broadcast (one vpdpwssd with an embedded broadcast: GCC
   keeps _mm512_set1_epi32 of a load as a separate broadcast) */
static inline AVX512 __m512i dpwssd_bcast(__m512i acc, __m512i w, const int16_t *p) {
    __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t *)p));
    return acc;
}

#define Q8_K16_ROW(t, b) ((const block_q8_K16 *)((const char *)vy + (t) * by) + (b))

/* NG × 16 rows × RN tokens, on Q8_K16 activations: NG groups of 16 packed rows (group k from vx + 16·k·bx). One
   group takes the activation pairs as embedded broadcasts; two share each pair, broadcast once, between the groups'
   registers (Xeon, one thread, 2048 × 2048 × 128 tokens: 113-116 -> 120-124 GMAC/s in a standalone prototype; three or
   four groups ran out of registers: slower). */
#define IQ_X16_TILE(NAME, NG, RN, FACTOR)                                                                     \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        const block_iq_x16 *p[NG];                                                                           \
        for (int k = 0; k < NG; k++) p[k] = (const block_iq_x16 *)((const char *)vx + 16 * (size_t)k * bx);  \
        __m512 acc[NG][RN][8];                                                                               \
        for (int k = 0; k < NG; k++)                                                                         \
            for (int t = 0; t < RN; t++)                                                                     \
                for (int l = 0; l < 8; l++) acc[k][t][l] = _mm512_setzero_ps();                              \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            const int16_t *a[RN];                                                                            \
            for (int t = 0; t < RN; t++) a[t] = Q8_K16_ROW(t, b)->qs;                                        \
            for (int l = 0; l < 8; l++) {                                                                    \
                __m512i lane[NG][RN];                                                                        \
                for (int k = 0; k < NG; k++)                                                                 \
                    for (int t = 0; t < RN; t++) lane[k][t] = _mm512_setzero_si512();                        \
                /* the 16 steps written out: gcc's own unrolling by 2 moved and spilled the lanes between steps \
                   (IQ2_S 2048 x 2048 x 128 tokens, one thread: 108-109 -> 115-119 GMAC/s) */                     \
                _Pragma("GCC unroll 16") for (int ib = 0; ib < QK_K / 32; ib++)                              \
                    for (int h = 0; h < 2; h++) {                                                            \
                        __m512i w[NG];                                                                       \
                        for (int k = 0; k < NG; k++) w[k] = _mm512_loadu_si512(p[k][b].w[ib][8 * h + l]);    \
                        for (int t = 0; t < RN; t++) {                                                       \
                            const int16_t *pair = a[t] + 32 * ib + 4 * l + 2 * h;                            \
                            if (NG == 1) {                                                                   \
                                lane[0][t] = dpwssd_bcast(lane[0][t], w[0], pair);                           \
                            } else {                                                                         \
                                const __m512i x = _mm512_set1_epi32(*(const int32_t *)pair);                 \
                                for (int k = 0; k < NG; k++) lane[k][t] = _mm512_dpwssd_epi32(lane[k][t], w[k], x); \
                            }                                                                                \
                        }                                                                                    \
                    }                                                                                        \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m512 dy = _mm512_set1_ps(Q8_K16_ROW(t, b)->d);                                   \
                    for (int k = 0; k < NG; k++)                                                             \
                        acc[k][t][l] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(p[k][b].d), dy),         \
                                                       _mm512_cvtepi32_ps(lane[k][t]), acc[k][t][l]);        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int k = 0; k < NG; k++)                                                                         \
            for (int t = 0; t < RN; t++) {                                                                   \
                /* ggml's hsum_float_8 order: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) */            \
                const __m512 *v = acc[k][t];                                                                 \
                const __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(v[0], v[4]), _mm512_add_ps(v[2], v[6])), \
                                                 _mm512_add_ps(_mm512_add_ps(v[1], v[5]), _mm512_add_ps(v[3], v[7]))); \
                store_rows16(s + 16 * (size_t)k * ls + t, ls, _mm512_mul_ps(_mm512_set1_ps(FACTOR), sum));   \
            }                                                                                                \
    }
/* the one-token kernels' final factors: the IQ2 grids hold 8× their values, IQ3_XXS's 4× */
#define IQ_X16_FACTOR_TILES(FACTOR, F)                                                                        \
    IQ_X16_TILE(tile_iq_x16_##FACTOR##_2, 1, 2, F)                                                           \
    IQ_X16_TILE(tile_iq_x16_##FACTOR##_4, 1, 4, F)                                                           \
    IQ_X16_TILE(tile_iq_x32_##FACTOR##_8, 2, 8, F)
IQ_X16_FACTOR_TILES(x1, 1.0f)
IQ_X16_FACTOR_TILES(x4, 0.25f)
IQ_X16_FACTOR_TILES(x8, 0.125f)

#define DELTA_OF(x) ((x)->delta)
IQ_TILE(tile_iq1_s, 4, 6, 1.0f, block_iq1_s_packed, 1)

_Static_assert(sizeof(block_iq_packed) <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");
/* a type's tiles at the AVX2, AVX-VNNI and AVX512 levels */
/* 32 rows × 8 tokens a pass; 16 rows × 4 or 2 tokens for a few generating sequences */
#define IQ_X16_ENTRY(T, FACTOR, X, RN, NARROW)                                                                \
    {.fn = tile_iq_x##X##_##FACTOR##_##RN, .rows = X, .cols = RN, .pack_size = IQ_X16_ROW_SIZE,                \
     .act_type = TK_Q8_K16, .narrow = NARROW, .pack_rows = pack_##T##_x##X}
#define IQ_TILE_ENTRIES(T, FACTOR, BLOCK, SUPER)                                                              \
    static AVX512 void pack_##T##_x16(const void *vx, size_t bx, int nr, void *dst, int64_t n) {              \
        pack_rows_x16(vx, bx, nr, dst, n, sizeof(BLOCK), T##_sub, SUPER);                                    \
    }                                                                                                        \
    /* two groups of 16 rows, one after the other (the second at 16 packed rows' bytes) */                   \
    static AVX512 void pack_##T##_x32(const void *vx, size_t bx, int nr, void *dst, int64_t n) {              \
        pack_##T##_x16(vx, bx, nr < 16 ? nr : 16, dst, n);                                                   \
        pack_##T##_x16((const char *)vx + 16 * bx, bx, nr > 16 ? nr - 16 : 0,                                 \
                       (char *)dst + 16 * (size_t)(n / QK_K) * IQ_X16_ROW_SIZE, n);                          \
    }                                                                                                        \
    static const struct tk_gemm T##_x16_2 = IQ_X16_ENTRY(T, FACTOR, 16, 2, NULL);                            \
    static const struct tk_gemm T##_x16_4 = IQ_X16_ENTRY(T, FACTOR, 16, 4, &T##_x16_2);                      \
    static const struct tk_gemm T##_tiles[3] = {                                                             \
        {tile_iq_bytes_##FACTOR##_avx2, 2, 5, pack_##T##_bytes, sizeof(block_iq_bytes), TK_Q8_K, NULL}, \
        {tile_iq_bytes_##FACTOR##_vnni, 2, 5, pack_##T##_bytes, sizeof(block_iq_bytes), TK_Q8_K, NULL}, \
        IQ_X16_ENTRY(T, FACTOR, 32, 8, &T##_x16_4)};
/* IQ4_XS at the AVX2 and AVX-VNNI levels: super-block order lets the integers be summed in any order, so the weights
   are packed in element order (scaled, 16 bits) and the tokens come as Q8_K16 (widened once per token and matrix): a
   (row, token) sub-block is two vpmaddwd and adds (or vpdpwssd) against loads. The lanes' exact sum, then the
   one-token kernel's float step: its bits. */
static AVX2 void pack_iq4_xs_elements(const void *vx, void *dst, int64_t n) {
    const block_iq4_xs *x = vx;
    block_iq_packed *p = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        p[b].d = tk_fp16_table[x[b].d];
        for (int ib = 0; ib < QK_K / 32; ib++) {
            int ls;
            const __m256i v = iq4_xs_sub(&x[b], ib, &ls);
            store_sub_block_elements(p[b].w + 32 * ib, v, ls, ls);
        }
    }
}

/* acc + the pair products of a and b: vpmaddwd and an add, or vpdpwssd */
static inline AVX2 __m256i madd_add_avx2(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}
static inline VNNI __m256i madd_add_vnni(__m256i acc, __m256i a, __m256i b) { return _mm256_dpwssd_avx_epi32(acc, a, b); }

/* the sums of the lanes of s[0..7], in lane p the sum of s[p] (exact integers: any order), by horizontal adds */
static inline AVX2 __m256i lane_sums8(const __m256i s[8]) {
    const __m256i q0 = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    const __m256i q1 = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

/* 2 rows x 4 tokens, pair p = 4 r + t in lane p: per super-block the 8 pairs' exact sums at once (lane_sums8), then
   the one-token kernel's float step, lane by lane: acc + (d_x · d_y) · sum as one fused multiply-add */
#define IQ_SB_TILE_K16(NAME, ATTR, MADD_ADD)                                                                  \
    static ATTR void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        enum { RM = 2, RN = 4 };                                                                             \
        typedef block_iq_packed iq_block;                                                                    \
        __m256 acc = _mm256_setzero_ps();                                                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            __m256i sum[RM * RN];                                                                            \
            for (int p = 0; p < RM * RN; p++) sum[p] = _mm256_setzero_si256();                               \
            for (int k = 0; k < QK_K / 16; k++)                                                              \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m256i y = load32(Q8_K16_ROW(t, b)->qs + 16 * k);                                 \
                    for (int r = 0; r < RM; r++)                                                             \
                        sum[RN * r + t] = MADD_ADD(sum[RN * r + t], load32(IQ_ROW(r, b)->w + 16 * k), y);    \
                }                                                                                            \
            const __m256 dx = _mm256_setr_m128(_mm_set1_ps(IQ_ROW(0, b)->d), _mm_set1_ps(IQ_ROW(1, b)->d)); \
            const __m128 dy4 = _mm_setr_ps(Q8_K16_ROW(0, b)->d, Q8_K16_ROW(1, b)->d, Q8_K16_ROW(2, b)->d,    \
                                           Q8_K16_ROW(3, b)->d);                                             \
            acc = _mm256_fmadd_ps(_mm256_mul_ps(dx, _mm256_setr_m128(dy4, dy4)),                             \
                                  _mm256_cvtepi32_ps(lane_sums8(sum)), acc);                                 \
        }                                                                                                    \
        float o[RM * RN];                                                                                    \
        _mm256_storeu_ps(o, acc);                                                                            \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) s[r * ls + t] = o[RN * r + t];                                      \
    }
IQ_SB_TILE_K16(tile_iq4_xs_k16_avx2, AVX2, madd_add_avx2)
IQ_SB_TILE_K16(tile_iq4_xs_k16_vnni, VNNI, madd_add_vnni)

/* The grid types' tiles at the AVX2 and AVX-VNNI levels on Q8_K tokens as they are: the rows packed as signed bytes (|w| <= 62), the
   tokens' bytes made unsigned (y + 128, one xor per token and sub-block), so that a (row, token) sub-block is one
   vpmaddubsw (pairs within 255·62·2 = 31620: exact in 16 bits), whose pair sums fall where the one-token kernels'
   do, and one vpmaddwd by the sub-block's scales into lane l (elements 4l..4l + 3), added (AVX2) or one vpdpwssd
   (AVX-VNNI) — started from the row's -128·Σ scale·w (pack_T_bytes), the one-token kernel's exact lanes; then its
   float step. */
#define IQ_BYTES_TILE(NAME, RM, RN, FACTOR, ATTR, MADD_ADD)                                                   \
    static ATTR void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        typedef block_iq_bytes iq_block;                                                                     \
        const __m256i flip = _mm256_set1_epi8((char)0x80);                                                  \
        __m256 acc[RM][RN];                                                                                  \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            __m256i sum[RM][RN];                                                                             \
            for (int r = 0; r < RM; r++)                                                                     \
                for (int t = 0; t < RN; t++) sum[r][t] = load32(IQ_ROW(r, b)->c);                            \
            for (int ib = 0; ib < QK_K / 32; ib++) {                                                         \
                __m256i w[RM];                                                                               \
                for (int r = 0; r < RM; r++) w[r] = load32(IQ_ROW(r, b)->w + 32 * ib);                       \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m256i y = _mm256_xor_si256(load32(Q8_K_ROW(t, b)->qs + 32 * ib), flip);          \
                    for (int r = 0; r < RM; r++)                                                             \
                        sum[r][t] = MADD_ADD(sum[r][t], _mm256_maddubs_epi16(y, w[r]), load32(IQ_ROW(r, b)->sc[ib])); \
                }                                                                                            \
            }                                                                                                \
            for (int r = 0; r < RM; r++)                                                                     \
                for (int t = 0; t < RN; t++)                                                                 \
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(IQ_ROW(r, b)->d * Q8_K_ROW(t, b)->d),         \
                                                _mm256_cvtepi32_ps(sum[r][t]), acc[r][t]);                   \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) s[r * ls + t] = FACTOR * hsum8(acc[r][t]);                          \
    }
/* 2 rows x 5 tokens (one thread, -O3, IQ2_S 2048 x 5632 x 128 tokens: 49 GMAC/s; 2 x 4 and 3 x 3 44, 2 x 6 47,
   3 x 4 40, 4 x 2 42; the 16-bit tile before, IQ_LANES_K16 4 x 2: 35). At the AVX-VNNI level (Xeon capped there,
   one thread, 1024 x 2048 x 128 tokens) 52-54 GMAC/s for the five grid types, where IQ_LANES_K16 (16-bit weights and
   tokens, two vpdpwssd a sub-block) gave 37-39. */
IQ_BYTES_TILE(tile_iq_bytes_x1_avx2, 2, 5, 1.0f, AVX2, madd_add_avx2)
IQ_BYTES_TILE(tile_iq_bytes_x4_avx2, 2, 5, 0.25f, AVX2, madd_add_avx2)
IQ_BYTES_TILE(tile_iq_bytes_x8_avx2, 2, 5, 0.125f, AVX2, madd_add_avx2)
IQ_BYTES_TILE(tile_iq_bytes_x1_vnni, 2, 5, 1.0f, VNNI, madd_add_vnni)
IQ_BYTES_TILE(tile_iq_bytes_x4_vnni, 2, 5, 0.25f, VNNI, madd_add_vnni)
IQ_BYTES_TILE(tile_iq_bytes_x8_vnni, 2, 5, 0.125f, VNNI, madd_add_vnni)

static const struct tk_gemm iq4_xs_tiles[2] = {
    {tile_iq4_xs_k16_avx2, 2, 4, pack_iq4_xs_elements, sizeof(block_iq_packed), TK_Q8_K16, NULL},
    {tile_iq4_xs_k16_vnni, 2, 4, pack_iq4_xs_elements, sizeof(block_iq_packed), TK_Q8_K16, NULL}};
IQ_TILE_ENTRIES(iq2_xxs, x8, block_iq2_xxs, NULL)
IQ_TILE_ENTRIES(iq2_xs, x8, block_iq2_xs, NULL)
IQ_TILE_ENTRIES(iq2_s, x8, block_iq2_s, iq2_s_super)
IQ_TILE_ENTRIES(iq3_xxs, x4, block_iq3_xxs, NULL)
IQ_TILE_ENTRIES(iq3_s, x1, block_iq3_s, NULL)
_Static_assert(sizeof(block_iq1_s_packed) <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");
static const struct tk_gemm iq1_s_tile = {tile_iq1_s, 4, 6, pack_iq1_s, sizeof(block_iq1_s_packed), TK_Q8_K, NULL};
static const struct tk_gemm iq4_nl_tile = {tile_iq4_nl, 4, 4, pack_iq4_nl, sizeof(block_iq4_nl_packed), TK_Q8_0,
                                           NULL};

const struct tk_gemm *tk_gemm_iq_x86(int wtype, int level) {
    if (level < 0 || level > 2) return NULL;
    switch (wtype) {
    case TK_IQ4_XS: return level == 2 ? &tile_iq4_xs_x16_8_tile : &iq4_xs_tiles[level];
    case TK_IQ4_NL: return level == 2 ? &iq4_nl_tile : &iq4_nl_avx2_tile;
    case TK_IQ1_S: return level == 2 ? &iq1_s_tile : NULL;
    case TK_IQ2_XXS: return &iq2_xxs_tiles[level];
    case TK_IQ2_XS: return &iq2_xs_tiles[level];
    case TK_IQ2_S: return &iq2_s_tiles[level];
    case TK_IQ3_XXS: return &iq3_xxs_tiles[level];
    case TK_IQ3_S: return &iq3_s_tiles[level];
    default: return NULL;
    }
}

#endif
