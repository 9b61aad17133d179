/* The AVX512-VNNI tiles of prompt processing (chosen at run time, cpu.c): Q8_0's and Q4_0's with 16 packed rows in
   the lanes for many tokens, Q8_0's with two tokens per 512-bit register on the file's rows for a few, Q4_K's and
   Q6_K's with two rows per register, BF16's with one accumulator per (row, token), F16's with four rows' four chains
   per register. Their integers and float steps are those of the one-token kernels (dot_avx2.c's 256-bit builds; F16
   and BF16: this level's), so every result is the one-token kernel's, bit for bit. */
#include <stddef.h>
#include <string.h>
#include "quants.h"
#include "quants_iq2.h"
#include "quants_iq3.h"

#if defined(__x86_64__) || defined(__i386__)
#include "dot_x86.h"

static inline AVX512 __m256 upper8(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }
/* a two-row tile's accumulator (row 0 in lanes 0-7, row 1 in 8-15) summed into s[0] and s[ls] */
static inline AVX512 void store_row_pair(float *s, size_t ls, __m512 acc) {
    s[0] = hsum8(_mm512_castps512_ps256(acc));
    s[ls] = hsum8(upper8(acc));
}

/* The AVX512 legacy tiles hold two tokens' accumulators in one 512-bit register (token 2k in lanes 0-7, 2k + 1 in
   lanes 8-15): lane for lane the operations of the 256-bit code, half the instructions. The weight block is broadcast
   to both halves; the scale vector is [d_x·d_y(2k) ×8 | d_x·d_y(2k+1) ×8]. */
static inline AVX512 __m512i dpbusd_zmm(__m512i acc, __m512i u, __m512i s) { return _mm512_dpbusd_epi32(acc, u, s); }
static inline AVX512 __m512i two_blocks(const int8_t *a, const int8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load32(a)), load32(b), 1);
}
/* [a ×8 | b ×8]: the scales of two tokens */
static inline AVX512 __m512 two_scalars(float a, float b) {
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b));
}

/* Q8_0 for a few tokens (the next tokens of a few generating sequences), on the file's rows: 4 rows x RN tokens (RN
   even), each row's block unpacked in registers once for all RN tokens, which costs less than packing it for them;
   acc[r][t] holds tokens 2t (lanes 0-7) and 2t + 1 (lanes 8-15) of row r. Per block, a row is w (its quants, in both
   halves) and c = -128·Σw; a token pair is a = y + 128 as unsigned bytes; a (row, token) lane is then
   (y + 128)·w - 128·Σw = Σ w·y, the very integer the one-token kernel sums, and the float steps are its own, so the
   results are its bits. */
#define Q8_0_RAW_TILE(NAME, RN)                                                                               \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        enum { RM = 4 };                                                                                     \
        const __m512i bias = _mm512_set1_epi8((char)0x80);                                                   \
        __m512 acc[RM][RN / 2];                                                                              \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN / 2; t++) acc[r][t] = _mm512_setzero_ps();                                \
        for (int64_t b = 0; b < n / QK; b++) {                                                               \
            __m512i w[RM], c[RM];                                                                            \
            __m512 dx[RM];                                                                                   \
            for (int r = 0; r < RM; r++) {                                                                   \
                const block_q8_0 *x = (const block_q8_0 *)((const char *)vx + r * bx) + b;                   \
                w[r] = _mm512_broadcast_i64x4(load32(x->qs));                                                \
                c[r] = _mm512_sub_epi32(_mm512_setzero_si512(), dpbusd_zmm(_mm512_setzero_si512(), bias, w[r])); \
                dx[r] = _mm512_set1_ps(tk_fp16_table[x->d]);                                                 \
            }                                                                                                \
            for (int t = 0; t < RN / 2; t++) {                                                               \
                const block_q8_0 *y0 = (const block_q8_0 *)((const char *)vy + 2 * t * by) + b;              \
                const block_q8_0 *y1 = (const block_q8_0 *)((const char *)y0 + by);                          \
                const __m512i a = _mm512_xor_si512(two_blocks(y0->qs, y1->qs), bias);                        \
                const __m512 dy = two_scalars(tk_fp16_table[y0->d], tk_fp16_table[y1->d]);                   \
                for (int r = 0; r < RM; r++)                                                                 \
                    acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dx[r], dy),                                    \
                                                _mm512_cvtepi32_ps(dpbusd_zmm(c[r], a, w[r])), acc[r][t]);   \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN / 2; t++) {                                                               \
                s[r * ls + 2 * t] = hsum8(_mm512_castps512_ps256(acc[r][t]));                                \
                s[r * ls + 2 * t + 1] = hsum8(upper8(acc[r][t]));                                            \
            }                                                                                                \
    }
Q8_0_RAW_TILE(tile_q8_0_raw8, 8)
Q8_0_RAW_TILE(tile_q8_0_raw4, 4)
Q8_0_RAW_TILE(tile_q8_0_raw2, 2)

/* Q8_0 for many tokens: 16 rows, one per 32-bit lane, with ggml's 8 float lanes per (row, token) kept as 8
   registers, acc[j] holding lane j (the sum of quants 4j..4j+3 of each block) of the 16 rows. A row tile is packed once
   for all its tokens (pack_q8_0x16): per block, register j = the rows' quants 4j..4j+3 biased by 128 to unsigned
   bytes, and the rows' scales as floats. Lane j of a token is then one vpdpbusd of register j with the token's quants
   4j..4j+3 broadcast, starting from its -128·Σ (TK_Q8_0S): Σ (w + 128)·y - 128·Σy = Σ w·y, the one-token kernel's
   integer; then fma(d_x·d_y, that, acc) as its, d_x·d_y once per token and block for the 16 rows. Per 64 products: a
   vpdpbusd, a conversion and a fused multiply-add (the two-tokens-per-register tile also multiplied the scales of each
   (row, token pair) and set up each pair's activations); the 8 lanes are summed at the end in hsum8's order. */
typedef struct { uint8_t w[QK / 4][64]; float d[16]; } block_q8_0x16;
#define Q8_0X16_ROW_SIZE (sizeof(block_q8_0x16) / 16) /* the packed bytes per row and block */

/* rows x + r·bx for r < nr (the rest zero weights, zero scales), 16 interleaved per block */
static AVX512 void pack_q8_0x16(const void *vx, size_t bx, int nr, void *dst, int64_t n) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i file_rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)bx)),
                  part_rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)sizeof(block_q8_0)));
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    block_q8_0x16 *p = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const block_q8_0 *x = (const block_q8_0 *)vx + b;
        block_q8_0 part[16];
        const char *src = (const char *)x;
        size_t stride = bx;
        if (nr < 16) { /* a partial tile: its rows' blocks copied, zero blocks after them (no row past nr is read) */
            memset(part, 0, sizeof part);
            for (int r = 0; r < nr; r++) memcpy(&part[r], src + (size_t)r * bx, sizeof(block_q8_0));
            src = (const char *)part;
            stride = sizeof(block_q8_0);
        }
        __m512i q[QK / 4];
        rows16_quads(src + offsetof(block_q8_0, qs), stride, q);
        rows16_quads(src + offsetof(block_q8_0, qs) + 16, stride, q + 4);
        for (int j = 0; j < QK / 4; j++) _mm512_storeu_si512(p[b].w[j], _mm512_xor_si512(q[j], bias));
        /* the scales: the low 16 bits of the word at each row's block */
        const __m512i d = _mm512_i32gather_epi32(nr < 16 ? part_rows : file_rows, src, 1);
        _mm512_storeu_ps(p[b].d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d)));
    }
}

/* the lanes of a[0..7] summed as hsum8 (simd_x86.h) sums a register's 8 lanes: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)) */
static inline AVX512 __m512 hsum8_across(const __m512 a[8]) {
    const __m512 even = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
    return _mm512_add_ps(even, _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])));
}

/* 16 rows x RN tokens from rows packed by pack_q8_0x16, on TK_Q8_0S activations */
#define Q8_0X16_TILE(NAME, RN)                                                                                \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        (void)bx;                                                                                            \
        const block_q8_0x16 *p = vx;                                                                         \
        __m512 acc[RN][QK / 4];                                                                              \
        for (int t = 0; t < RN; t++)                                                                         \
            for (int j = 0; j < QK / 4; j++) acc[t][j] = _mm512_setzero_ps();                                \
        for (int64_t b = 0; b < n / QK; b++) {                                                               \
            const __m512 dx = _mm512_loadu_ps(p[b].d);                                                       \
            const block_q8_0s *y[RN];                                                                        \
            __m512 d[RN];                                                                                    \
            for (int t = 0; t < RN; t++) {                                                                   \
                y[t] = (const block_q8_0s *)((const char *)vy + t * by) + b;                                 \
                d[t] = _mm512_mul_ps(dx, _mm512_set1_ps(y[t]->d));                                           \
            }                                                                                                \
            for (int j = 0; j < QK / 4; j++) {                                                               \
                const __m512i w = _mm512_loadu_si512(p[b].w[j]);                                             \
                for (int t = 0; t < RN; t++) {                                                               \
                    int32_t a;                                                                               \
                    memcpy(&a, y[t]->qs + 4 * j, 4);                                                         \
                    const __m512i sum = dpbusd_zmm(_mm512_set1_epi32(y[t]->s[j]), w, _mm512_set1_epi32(a));  \
                    acc[t][j] = _mm512_fmadd_ps(d[t], _mm512_cvtepi32_ps(sum), acc[t][j]);                  \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < RN; t++) store_rows16(s + t, ls, hsum8_across(acc[t]));                          \
    }
Q8_0X16_TILE(tile_q8_0x16_2, 2)
Q8_0X16_TILE(tile_q8_0x16_1, 1)

/* The Q4_0 tiles: 16 weight rows, one per 32-bit lane (as ggml's repacked Q4_0 gemm holds 8 rows in a 256-bit
   register), in the block-sum order of the one-token kernels. A row tile is packed once for all its tokens
   (pack_q4_0x16): per block, 8 registers of 4 consecutive weights q - 8 of each row, the rows' -128·Σ(q - 8) and
   their scales. A token's block is then 8 vpdpbusd of its activation bytes y + 128, four at a time broadcast to every
   row, starting from -128·Σ(q - 8): the lane is Σ (q - 8)·y, the exact integer the one-token kernels sum; then one
   fused multiply-add per (row, token), fma(Σ, d_x·d_y, acc), for the 16 rows at once. */
typedef struct { int8_t w[8][64]; int32_t c[16]; float d[16]; } block_q4_0x16;
#define Q4_0X16_ROW_SIZE (sizeof(block_q4_0x16) / 16) /* the packed bytes per row and block */

/* rows x + r·bx for r < nr (the rest zero weights, zero scales), 16 interleaved per block: a whole tile's quants by
   rows16_quads (gathers cost a tenth of a 128-token prompt), a partial one's gathered (no row past nr is read) */
static AVX512 void pack_q4_0x16(const void *vx, size_t bx, int nr, void *dst, int64_t n) {
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)bx));
    const __m512i zero = _mm512_setzero_si512(), m4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
    block_q4_0x16 *p = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const block_q4_0 *x = (const block_q4_0 *)vx + b;
        __m512i c = zero, q4[4];
        if (nr == 16) rows16_quads((const char *)x->qs, bx, q4);
        else
            for (int j = 0; j < 4; j++) q4[j] = _mm512_mask_i32gather_epi32(zero, live, rows, x->qs + 4 * j, 1);
        for (int j = 0; j < 4; j++) {
            const __m512i q = q4[j];
            const __m512i lo = _mm512_maskz_mov_epi32(live, _mm512_sub_epi8(_mm512_and_si512(q, m4), eight));
            const __m512i hi = _mm512_maskz_mov_epi32(
                live, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi32(q, 4), m4), eight));
            _mm512_storeu_si512(p[b].w[j], lo);
            _mm512_storeu_si512(p[b].w[j + 4], hi);
            c = dpbusd_zmm(dpbusd_zmm(c, _mm512_set1_epi8((char)0x80), lo), _mm512_set1_epi8((char)0x80), hi);
        }
        _mm512_storeu_si512(p[b].c, _mm512_sub_epi32(zero, c));
        /* the scales: the low 16 bits of the word at each row's block */
        const __m512i d = _mm512_mask_i32gather_epi32(zero, live, rows, &x->d, 1);
        _mm512_storeu_ps(p[b].d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d)));
    }
}

/* 16 rows x RN tokens from rows packed by pack_q4_0x16 */
#define Q4_0X16_TILE(NAME, RN)                                                                                \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        (void)bx;                                                                                            \
        const block_q4_0x16 *p = vx;                                                                         \
        __m512 acc[RN];                                                                                      \
        for (int t = 0; t < RN; t++) acc[t] = _mm512_setzero_ps();                                           \
        for (int64_t b = 0; b < n / QK; b++) {                                                               \
            uint32_t u[RN][8];                                                                               \
            float dy[RN];                                                                                    \
            q8_0_tokens_u8(vy, by, b, RN, u, dy);                                                            \
            /* read back as broadcast loads: the compiler would rebuild each from the registers by shuffles */  \
            __asm__ __volatile__("" ::: "memory");                                                           \
            __m512i w[8];                                                                                    \
            for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512(p[b].w[j]);                                \
            const __m512i c = _mm512_loadu_si512(p[b].c);                                                    \
            const __m512 dx = _mm512_loadu_ps(p[b].d);                                                       \
            for (int t = 0; t < RN; t++) {                                                                   \
                __m512i sum = c;                                                                             \
                for (int j = 0; j < 8; j++) sum = dpbusd_zmm(sum, _mm512_set1_epi32((int)u[t][j]), w[j]);    \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dx, _mm512_set1_ps(dy[t])), acc[t]); \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < RN; t++) store_rows16(s + t, ls, acc[t]);                                        \
    }
Q4_0X16_TILE(tile_q4_0x16_8, 8)

/* Q4_0 for a few tokens (a few generating sequences' next tokens), where packing a row tile would cost more than the
   products: the 16 rows read from the file, each block's nibbles transposed in registers into pack_q4_0x16's lanes
   (row r's bytes 4j..4j+3 of qs in lane r: four 128-bit loads per register, then two rounds of unpacks), the scales
   converted from the rows' halves. A token's block is 8 vpdpbusd of the nibbles (unsigned) with its activation bytes,
   four at a time broadcast to every row, starting from -8·Σy: the lane is Σ (q - 8)·y, the packed tile's exact
   integer, and the float step is its own, so the same bits. */
/* For one token (generation: 16 rows a tile instead of the two-row kernel's 2, half the instructions per weight)
   the tile's 16 rows are 16 short streams the hardware prefetcher does not follow (one token of 64 matrices 5632 x
   2048 from memory, 2 threads, Zen 4: 12.8 GB/s without a software prefetch, the two-row kernel 18.3): the rows
   Q4_0X16_AHEAD rows on (the row tile after next, which follows this one in the file) are fetched as one linear
   stream at the pace the tile reads its own, 16 blocks' bytes per block (25.8 GB/s; 1 tile ahead 18.3, 3 or 4 as 2).
   A line at a time, one before each row's load (q4_0_rows16_4blocks): the 18 lines of a step fetched at once held
   the tile at the prefetches (perf, Xeon: 46% of its time on the instruction after them), their misses filling the
   core's line fill buffers while the loads behind them waited (one token of 24 matrices 16384 x 2048 from memory, 2
   threads, Xeon, alternating: 17.0-17.2 -> 19.2-19.5 GB/s). */
#define Q4_0X16_AHEAD 32

/* One token (generation), four blocks of a row at a time, read as they lie in the file (72 bytes: one 64-byte load
   and the last block's quants): the four blocks' quants gathered by one vpermt2w (128-bit lane k = block k), low and
   high nibbles met by vpdpbusd with the token's four blocks' first and second 16 activations, starting from -8·Σy
   spread over the lanes (lane 4k + j: four of block k's products); four rows' lanes then summed per block in two
   rounds of unpacks — the one-token kernel's exact integers, and the float steps in block order, as its: its bits.
   (The per-block path below spends transposes, 12 inserts, 8 unpacks and 16 scalar scale loads per block of 16 rows,
   which bound its speed from the caches.) */

/* The token's blocks y[0..3]: first and second 16 activations of block k in 128-bit lane k of *yl and *yh; returns
   -8·Σy spread over the lanes as the nibbles' products are. */
static inline AVX512 __m512i q8_0_4blocks(const block_q8_0 *y, __m512i *yl, __m512i *yh) {
#define Y16(k, o) _mm_loadu_si128((const __m128i *)(y[k].qs + (o)))
    /* the lane of each insert a constant (clang wants one; a loop over k has none before unrolling) */
    const __m512i l = _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(
        _mm512_castsi128_si512(Y16(0, 0)), Y16(1, 0), 1), Y16(2, 0), 2), Y16(3, 0), 3);
    const __m512i h = _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(
        _mm512_castsi128_si512(Y16(0, 16)), Y16(1, 16), 1), Y16(2, 16), 2), Y16(3, 16), 3);
#undef Y16
    *yl = l;
    *yh = h;
    const __m512i eight = _mm512_set1_epi8(8);
    return _mm512_sub_epi32(_mm512_setzero_si512(), dpbusd_zmm(dpbusd_zmm(_mm512_setzero_si512(), eight, l), eight, h));
}

/* Four rows (row i at x + i·bx) times those blocks: dword 4k + i = row i's integer sum of block k; a[i] = row i's
   first 64 bytes, its four scales at words 0, 9, 18 and 27. Before row i's load, the line at pf + 64·i is fetched
   into L2. */
static inline AVX512 __m512i q4_0_rows4_4blocks(const char *x, size_t bx, __m512i yl, __m512i yh, __m512i init,
                                                 __m512i a[4], const char *pf) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    /* word i of the quants register: block i / 8's word i % 8 (the quants of blocks 0-2 start at words 1, 10 and 19
       of the 64-byte load, block 3's are the second load) */
    const __m512i qidx = _mm512_set_epi16(39, 38, 37, 36, 35, 34, 33, 32, 26, 25, 24, 23, 22, 21, 20, 19,
                                          17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    __m512i rs[4];
    for (int i = 0; i < 4; i++) {
        const char *p = x + (size_t)i * bx;
        _mm_prefetch(pf + 64 * i, PREFETCH_HINT);
        a[i] = _mm512_loadu_si512(p);
        const __m512i q = _mm512_permutex2var_epi16(
            a[i], qidx, _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + 3 * sizeof(block_q4_0) + 2))));
        rs[i] = dpbusd_zmm(dpbusd_zmm(init, _mm512_and_si512(q, m4), yl),
                           _mm512_and_si512(_mm512_srli_epi16(q, 4), m4), yh);
    }
    const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(rs[0], rs[1]), _mm512_unpackhi_epi32(rs[0], rs[1]));
    const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(rs[2], rs[3]), _mm512_unpackhi_epi32(rs[2], rs[3]));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
}

/* 16 rows: the four groups' sums shuffled into one register per block with row r in lane r; the scales, each row's
   four picked by a masked vpermw into its quad-word of two registers, then one vpermt2w per block. The 18 lines
   (16 blocks' bytes) from pf on are fetched into L2 meanwhile, a line per row and the last two after them. */
static inline AVX512 __m512 q4_0_rows16_4blocks(__m512 acc, const char *x, size_t bx, const block_q8_0 *y,
                                                const char *pf) {
    __m512i yl, yh;
    const __m512i init = q8_0_4blocks(y, &yl, &yh);
    const __m512i didx = _mm512_set1_epi64(0x001B001200090000LL); /* the four scales (words 0, 9, 18, 27) */
    __m512i t[4], dd[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int g = 0; g < 4; g++) { /* rows 4g .. 4g + 3 */
        __m512i a[4];
        t[g] = q4_0_rows4_4blocks(x + (size_t)(4 * g) * bx, bx, yl, yh, init, a, pf + 256 * g);
        for (int i = 0; i < 4; i++) {
            const int r = 4 * g + i;
            dd[r / 8] = _mm512_mask_permutexvar_epi16(dd[r / 8], (__mmask32)0xF << (4 * (r % 8)), didx, a[i]);
        }
    }
    _Static_assert(4 * 16 * sizeof(block_q4_0) == 18 * 64, "a step's blocks: 18 lines");
    _mm_prefetch(pf + 1024, PREFETCH_HINT);
    _mm_prefetch(pf + 1088, PREFETCH_HINT);
    const __m512i u0 = _mm512_shuffle_i32x4(t[0], t[1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i u1 = _mm512_shuffle_i32x4(t[2], t[3], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i u2 = _mm512_shuffle_i32x4(t[0], t[1], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i u3 = _mm512_shuffle_i32x4(t[2], t[3], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i v[4] = {_mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)),
                          _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(3, 1, 3, 1))};
    for (int k = 0; k < 4; k++) {
        /* word 4r + k of the two registers: row r's scale of block k */
        const __m512i widx = _mm512_add_epi16(_mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 56,
                                                               52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0),
                                              _mm512_set1_epi16((short)k));
        const __m512 dx = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(dd[0], widx, dd[1])));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v[k]), _mm512_mul_ps(dx, _mm512_set1_ps(tk_fp16_table[y[k].d])), acc);
    }
    return acc;
}

#define Q4_0X16_RAW_TILE(NAME, RN)                                                                            \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        const __m512i m4 = _mm512_set1_epi8(0x0F);                                                           \
        __m512 acc[RN];                                                                                      \
        for (int t = 0; t < RN; t++) acc[t] = _mm512_setzero_ps();                                           \
        int64_t b = 0;                                                                                       \
        if (RN == 1)                                                                                        \
            for (; b + 4 <= n / QK; b += 4)                                                                  \
                acc[0] = q4_0_rows16_4blocks(acc[0], (const char *)vx + (size_t)b * sizeof(block_q4_0), bx,  \
                                             (const block_q8_0 *)vy + b,                                     \
                                             (const char *)vx + Q4_0X16_AHEAD * bx + (size_t)b * 16 * sizeof(block_q4_0)); \
        for (; b < n / QK; b++) {                                                                            \
            const char *x = (const char *)vx + (size_t)b * sizeof(block_q4_0);                               \
            if (RN == 1) /* one token: the weights come from memory once, see Q4_0X16_AHEAD */               \
                for (int o = 0; o < 16 * (int)sizeof(block_q4_0); o += 64)                                   \
                    _mm_prefetch((const char *)vx + Q4_0X16_AHEAD * bx + (size_t)b * 16 * sizeof(block_q4_0) + o, \
                                 PREFETCH_HINT);                                                                  \
            __m512i d4[4], q[8];                                                                             \
            uint16_t h[16];                                                                                  \
            rows16_quads(x + 2, bx, d4);                                                                     \
            for (int r = 0; r < 16; r++) memcpy(&h[r], x + (size_t)r * bx, 2);                              \
            for (int j = 0; j < 4; j++) { /* elements 4j.. (low nibbles) and 16 + 4j.. (high) of every row */ \
                q[j] = _mm512_and_si512(d4[j], m4);                                                          \
                q[j + 4] = _mm512_and_si512(_mm512_srli_epi32(d4[j], 4), m4);                                \
            }                                                                                                \
            const __m512 dx = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));                       \
            for (int t = 0; t < RN; t++) {                                                                   \
                const block_q8_0 *y = (const block_q8_0 *)((const char *)vy + t * by) + b;                  \
                const int sum_y = q8_0_sum(y);                                                               \
                /* four independent chains of vpdpbusd (integers: the order is free) */                     \
                __m512i part[4] = {_mm512_set1_epi32(-8 * sum_y), _mm512_setzero_si512(), _mm512_setzero_si512(), \
                                   _mm512_setzero_si512()};                                                  \
                for (int j = 0; j < 8; j++) {                                                                \
                    int32_t a;                                                                               \
                    memcpy(&a, y->qs + 4 * j, 4);                                                            \
                    part[j % 4] = dpbusd_zmm(part[j % 4], q[j], _mm512_set1_epi32(a));                       \
                }                                                                                            \
                const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(part[0], part[1]),                     \
                                                     _mm512_add_epi32(part[2], part[3]));                    \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dx, _mm512_set1_ps(tk_fp16_table[y->d])), acc[t]); \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < RN; t++) store_rows16(s + t, ls, acc[t]);                                        \
    }
Q4_0X16_RAW_TILE(tile_q4_0x16_raw1, 1)
Q4_0X16_RAW_TILE(tile_q4_0x16_raw2, 2)
Q4_0X16_RAW_TILE(tile_q4_0x16_raw4, 4)
static const struct tk_gemm tile_q4_0x16_raw1_tile = {.fn = tile_q4_0x16_raw1, .rows = 16, .cols = 1};
static const struct tk_gemm tile_q4_0x16_raw2_tile = {.fn = tile_q4_0x16_raw2, .rows = 16, .cols = 2,
                                                      .narrow = &tile_q4_0x16_raw1_tile};
static const struct tk_gemm tile_q4_0x16_raw4_tile = {.fn = tile_q4_0x16_raw4, .rows = 16, .cols = 4,
                                                      .narrow = &tile_q4_0x16_raw2_tile};
/* 8 tokens a pass (8 weight registers, 8 accumulators), the row tile packed once; 4, 2 or 1 raw */
static const struct tk_gemm tile_q4_0x16_8_tile = {.fn = tile_q4_0x16_8, .rows = 16, .cols = 8,
                                                   .pack_size = Q4_0X16_ROW_SIZE, .act_type = TK_Q8_0,
                                                   .narrow = &tile_q4_0x16_raw4_tile, .pack_rows = pack_q4_0x16};
_Static_assert(Q4_0X16_ROW_SIZE <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* Q8_0: the packed 16-row tile for many tokens (an odd last one by its one-token variant); for at most 8, the raw
   tiles, widest first */
static const struct tk_gemm tile_q8_0_raw2_tile = {.fn = tile_q8_0_raw2, .rows = 4, .cols = 2};
static const struct tk_gemm tile_q8_0_raw4_tile = {.fn = tile_q8_0_raw4, .rows = 4, .cols = 4,
                                                   .narrow = &tile_q8_0_raw2_tile};
static const struct tk_gemm tile_q8_0_raw8_tile = {.fn = tile_q8_0_raw8, .rows = 4, .cols = 8,
                                                   .narrow = &tile_q8_0_raw4_tile};
static const tk_gemm_fn tile_q8_0x16_fewer[] = {tile_q8_0x16_1};
static const struct tk_gemm tile_q8_0_zmm_tile = {.fn = tile_q8_0x16_2, .rows = 16, .cols = 2,
                                                  .pack_size = Q8_0X16_ROW_SIZE, .act_type = TK_Q8_0S,
                                                  .narrow = &tile_q8_0_raw8_tile, .pack_rows = pack_q8_0x16,
                                                  .fewer = tile_q8_0x16_fewer};
_Static_assert(Q8_0X16_ROW_SIZE <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* [a | b]: two 256-bit halves */
static inline AVX512 __m512i two_ymm(__m256i a, __m256i b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

static inline AVX512 __m512 two_halves(__m256 a, __m256 b) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1));
}
static inline AVX512 __m512 both_halves(__m256 a) { return two_halves(a, a); }

/* Q4_K for a few tokens (the next tokens of a few generating sequences), on the file's rows: repacking a row tile
   for them cost more than their products. A tile is two rows sharing each 512-bit register (row 0 in lanes 0-7, row 1
   in lanes 8-15): their super-block is unpacked and transposed in registers into the packed layout (what
   tk_pack_q4_K_avx2 stores, never stored here) once for all RN tokens, whose Q8_KX blocks are broadcast to both
   halves. Lane for lane the packed tile's integers and float operations, so every result is the one-token
   kernel's. */

/* v[s] = the 32-bit elements s of v[0..7], within each 256-bit half (transpose8_epi32 on two rows at once) */
static inline AVX512 void transpose8_epi32_x2(__m512i v[8]) {
    __m512i t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm512_unpacklo_epi32(v[k], v[k + 1]);
        t[k + 1] = _mm512_unpackhi_epi32(v[k], v[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm512_unpacklo_epi64(t[k], t[k + 2]);
        u[k + 1] = _mm512_unpackhi_epi64(t[k], t[k + 2]);
        u[k + 2] = _mm512_unpacklo_epi64(t[k + 1], t[k + 3]);
        u[k + 3] = _mm512_unpackhi_epi64(t[k + 1], t[k + 3]);
    }
    /* per half, the low (lo) or high (hi) 128 bits of u[c] then of u[c + 4] */
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int c = 0; c < 4; c++) {
        const __m512i a = u[c], b = u[c + 4];
        v[c] = _mm512_permutex2var_epi64(a, lo, b);
        v[c + 4] = _mm512_permutex2var_epi64(a, hi, b);
    }
}

/* q4_K_factors of two rows' super-blocks at once: xs = d · scales, xm = dmin · mins (row 0 in lanes 0-7, row 1 in
   8-15); the 6-bit scales and mins unpacked as k4_scales_mins does, in vector lanes */
static inline AVX512 void q4_K_factors_x2(const block_q4_K *x0, const block_q4_K *x1, __m512 *xs, __m512 *xm) {
    /* per row, dwords [d | dmin, a, b, c] with a, b, c the 12 bytes of scales */
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)x0)),
                                              _mm_loadu_si128((const __m128i *)x1), 1);
    const __m256i m6 = _mm256_set1_epi8(0x3f), m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
    const __m256i acbc = _mm256_shuffle_epi32(v, _MM_SHUFFLE(3, 2, 3, 1));
    const __m256i aabb = _mm256_shuffle_epi32(v, _MM_SHUFFLE(2, 2, 1, 1));
    /* [a & m6, c & m4, b & m6, (c >> 4) & m4] | [0, ((a >> 6) & m2) << 4, 0, ((b >> 6) & m2) << 4] */
    const __m256i low = _mm256_and_si256(_mm256_srlv_epi32(acbc, _mm256_setr_epi32(0, 0, 0, 4, 0, 0, 0, 4)),
                                         _mm256_blend_epi32(m6, m4, 0xAA));
    const __m256i high = _mm256_slli_epi32(
        _mm256_and_si256(_mm256_srlv_epi32(aabb, _mm256_setr_epi32(0, 6, 0, 6, 0, 6, 0, 6)),
                         _mm256_blend_epi32(_mm256_setzero_si256(), m2, 0xAA)), 4);
    const __m256i sm = _mm256_or_si256(low, high); /* per row bytes [sc0..sc7, m0..m7] */
    const __m128i r0 = _mm256_castsi256_si128(sm), r1 = _mm256_extracti128_si256(sm, 1);
    const __m512 f = _mm512_cvtph_ps(v); /* d and dmin: halves 0 and 1 of each row */
    const __m512 d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8), f);
    const __m512 dmin = _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 9, 9, 9, 9, 9, 9, 9, 9), f);
    *xs = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(r0, r1))));
    *xm = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi64(r0, r1))));
}

/* super-blocks x0 and x1 of two rows: w[s] their step-s quants in the packed layout, xs and xm their factors */
static inline AVX512 void q4_K_pair(const block_q4_K *x0, const block_q4_K *x1, __m512i w[8], __m512 *xs,
                                    __m512 *xm) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; j++) {
        const __m512i q = two_ymm(load32(x0->qs + 32 * j), load32(x1->qs + 32 * j));
        w[2 * j] = _mm512_and_si512(q, m4);
        w[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    }
    transpose8_epi32_x2(w);
    q4_K_factors_x2(x0, x1, xs, xm);
}

#define Q4_K_RAW_TILE_512(NAME, RN, NARROW)                                                                   \
    AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {   \
        __m512 acc[RN];                                                                                      \
        for (int t = 0; t < RN; t++) acc[t] = _mm512_setzero_ps();                                           \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            const block_q4_K *x0 = (const block_q4_K *)vx + b, *x1 = (const block_q4_K *)((const char *)x0 + bx); \
            for (int o = 0; o < (int)sizeof *x0; o += 64) {                                                  \
                _mm_prefetch((const char *)x0 + PREFETCH + o, PREFETCH_HINT);                                \
                _mm_prefetch((const char *)x1 + PREFETCH + o, PREFETCH_HINT);                                \
            }                                                                                                \
            __m512i w[8], D[RN];                                                                             \
            __m512 xs, xm;                                                                                   \
            q4_K_pair(x0, x1, w, &xs, &xm);                                                                  \
            for (int t = 0; t < RN; t++) D[t] = _mm512_setzero_si512();                                      \
            for (int st = 0; st < 8; st++)                                                                   \
                for (int t = 0; t < RN; t++)                                                                 \
                    D[t] = dpbusd_zmm(D[t], w[st], _mm512_broadcast_i64x4(load32(Q8_KX_ROW(t, b)->qs + 32 * st))); \
            for (int t = 0; t < RN; t++) {                                                                   \
                const block_q8_KX *y = Q8_KX_ROW(t, b);                                                      \
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(y->d), xs), _mm512_cvtepi32_ps(D[t]), acc[t]); \
                acc[t] = _mm512_fnmadd_ps(xm, both_halves(_mm256_loadu_ps(y->yb)), acc[t]);                  \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < RN; t++) {                                                                       \
            store_row_pair(s + t, ls, acc[t]);                                                               \
        }                                                                                                    \
    }                                                                                                        \
    PACKED_TILE_ENTRY(NAME, 2, RN, NULL, 0, TK_Q8_KX, NARROW)

/* Q4_K for one token (generation): two rows a tile again, but no transposition. The token comes as Q8_KP, whose
   64-byte quarters are sub-blocks (0|2), (1|3), (4|6), (5|7): exactly what the low and high nibbles of a row's
   bytes 0-63 and 64-127 hold, so each row's four products are one dpbusd each on the bytes as stored, eight partial
   sums per sub-block; an add tree (unpack, unpack, one permute for both rows) leaves the sub-block sums in the
   transposing tiles' lanes (row 0's sub-block l in lane l, row 1's in lane 8 + l). Integer sums are exact, and the
   float operations are the other tiles', so every result is theirs. */
static inline AVX512 __m512i q4_K_chunk_sums(const block_q4_K *x, const __m512i y[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), z = _mm512_setzero_si512();
    const __m512i a = _mm512_loadu_si512(x->qs), b = _mm512_loadu_si512(x->qs + 64);
    const __m512i p0 = dpbusd_zmm(z, _mm512_and_si512(a, m4), y[0]);
    const __m512i p1 = dpbusd_zmm(z, _mm512_and_si512(_mm512_srli_epi16(a, 4), m4), y[1]);
    const __m512i p2 = dpbusd_zmm(z, _mm512_and_si512(b, m4), y[2]);
    const __m512i p3 = dpbusd_zmm(z, _mm512_and_si512(_mm512_srli_epi16(b, 4), m4), y[3]);
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
    /* 128-bit chunk c: the sums of chunk c of p0, p1, p2, p3 */
    return _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
}

AVX512 void tile_q4_K_raw1(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {
    (void)by;
    /* sub-block l of p_k's pair sits in chunks 0-1 (first of the pair) or 2-3 (second), dword k of each */
    const __m512i lo = _mm512_setr_epi32(0, 1, 8, 9, 2, 3, 10, 11, 16, 17, 24, 25, 18, 19, 26, 27);
    const __m512i hi = _mm512_setr_epi32(4, 5, 12, 13, 6, 7, 14, 15, 20, 21, 28, 29, 22, 23, 30, 31);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_q4_K *x0 = (const block_q4_K *)vx + b, *x1 = (const block_q4_K *)((const char *)x0 + bx);
        for (int o = 0; o < (int)sizeof *x0; o += 64) {
            _mm_prefetch((const char *)x0 + PREFETCH + o, PREFETCH_HINT);
            _mm_prefetch((const char *)x1 + PREFETCH + o, PREFETCH_HINT);
        }
        const block_q8_KX *y = (const block_q8_KX *)vy + b;
        __m512i yq[4];
        for (int k = 0; k < 4; k++) yq[k] = _mm512_loadu_si512(y->qs + 64 * k);
        const __m512i c0 = q4_K_chunk_sums(x0, yq), c1 = q4_K_chunk_sums(x1, yq);
        const __m512i d =
            _mm512_add_epi32(_mm512_permutex2var_epi32(c0, lo, c1), _mm512_permutex2var_epi32(c0, hi, c1));
        __m512 xs, xm;
        q4_K_factors_x2(x0, x1, &xs, &xm);
        acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(y->d), xs), _mm512_cvtepi32_ps(d), acc);
        acc = _mm512_fnmadd_ps(xm, both_halves(_mm256_loadu_ps(y->yb)), acc);
    }
    store_row_pair(s, ls, acc);
}
PACKED_TILE_ENTRY(tile_q4_K_raw1, 2, 1, NULL, 0, TK_Q8_KP, NULL)
Q4_K_RAW_TILE_512(tile_q4_K_raw2, 2, &tile_q4_K_raw1_tile)
Q4_K_RAW_TILE_512(tile_q4_K_raw4, 4, &tile_q4_K_raw2_tile)
Q4_K_RAW_TILE_512(tile_q4_K_raw6, 6, &tile_q4_K_raw4_tile)

/* Q4_K for many tokens: the row tile packed once by pack_q4_K_x2, two rows to a 512-bit register (q4_K_pair's
   layout: row 2p in lanes 0-7, row 2p + 1 in lanes 8-15), so a step loads each pair's weights whole and each token's
   Q8_KX bytes as one broadcast, with no shuffles in the loop; the lanes and float operations are the raw tiles', so
   every result is the one-token kernel's. 6 rows x 4 tokens (24 accumulators, 12 integer sums): a token's
   activations, read from L2 once per row tile, meet 6 rows (faster than 4 x 6 and 8 x 3 here). */
typedef struct { uint8_t w[8][64]; float xs[16], xm[16]; } block_q4_K_x2;
#define Q4_K_X2_PAIR(p, b) ((const block_q4_K_x2 *)((const char *)vx + 2 * (p) * bx) + (b))

#define Q4_K_X2_PAIRS 3 /* the tile's rows: 3 pairs */

static AVX512 void pack_q4_K_x2(const void *vx, size_t bx, int nr, void *dst, int64_t n) {
    static const block_q4_K zero_row;
    const int64_t nb = n / QK_K;
    for (int r = 0; r < 2 * Q4_K_X2_PAIRS; r += 2) {
        const block_q4_K *x0 = r < nr ? (const block_q4_K *)((const char *)vx + r * bx) : NULL;
        const block_q4_K *x1 = r + 1 < nr ? (const block_q4_K *)((const char *)vx + (r + 1) * bx) : NULL;
        block_q4_K_x2 *p = (block_q4_K_x2 *)dst + (r / 2) * nb;
        for (int64_t b = 0; b < nb; b++) {
            __m512i w[8];
            __m512 xs, xm;
            for (int o = 0; o < (int)sizeof *x0; o += 64) {
                if (x0) _mm_prefetch((const char *)(x0 + b) + PREFETCH + o, PREFETCH_HINT);
                if (x1) _mm_prefetch((const char *)(x1 + b) + PREFETCH + o, PREFETCH_HINT);
            }
            q4_K_pair(x0 ? x0 + b : &zero_row, x1 ? x1 + b : &zero_row, w, &xs, &xm);
            for (int st = 0; st < 8; st++) _mm512_storeu_si512(p[b].w[st], w[st]);
            _mm512_storeu_ps(p[b].xs, xs);
            _mm512_storeu_ps(p[b].xm, xm);
        }
    }
}

#define Q4_K_X2_TILE(NAME, RP, RN)                                                                            \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        __m512 acc[RP][RN];                                                                                  \
        for (int p = 0; p < RP; p++)                                                                         \
            for (int t = 0; t < RN; t++) acc[p][t] = _mm512_setzero_ps();                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            __m512i D[RP][RN];                                                                               \
            for (int p = 0; p < RP; p++)                                                                     \
                for (int t = 0; t < RN; t++) D[p][t] = _mm512_setzero_si512();                               \
            _Pragma("GCC unroll 8") for (int st = 0; st < 8; st++) {                                         \
                __m512i w[RP];                                                                               \
                for (int p = 0; p < RP; p++) w[p] = _mm512_loadu_si512(Q4_K_X2_PAIR(p, b)->w[st]);           \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m512i a = _mm512_broadcast_i64x4(load32(Q8_KX_ROW(t, b)->qs + 32 * st));         \
                    for (int p = 0; p < RP; p++) D[p][t] = dpbusd_zmm(D[p][t], w[p], a);                     \
                }                                                                                            \
            }                                                                                                \
            for (int t = 0; t < RN; t++) {                                                                   \
                const block_q8_KX *y = Q8_KX_ROW(t, b);                                                      \
                const __m512 yd = _mm512_set1_ps(y->d), yb = both_halves(_mm256_loadu_ps(y->yb));            \
                for (int p = 0; p < RP; p++) {                                                               \
                    const block_q4_K_x2 *x = Q4_K_X2_PAIR(p, b);                                             \
                    acc[p][t] = _mm512_fmadd_ps(_mm512_mul_ps(yd, _mm512_loadu_ps(x->xs)), _mm512_cvtepi32_ps(D[p][t]), acc[p][t]); \
                    acc[p][t] = _mm512_fnmadd_ps(_mm512_loadu_ps(x->xm), yb, acc[p][t]);                     \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int p = 0; p < RP; p++)                                                                         \
            for (int t = 0; t < RN; t++) {                                                                   \
                store_row_pair(s + 2 * p * ls + t, ls, acc[p][t]);                                           \
            }                                                                                                \
    }                                                                                                        \
    static const struct tk_gemm NAME##_tile = {.fn = NAME, .rows = 2 * RP, .cols = RN,                       \
                                               .pack_size = sizeof(block_q4_K_x2) / 2, .act_type = TK_Q8_KX,  \
                                               .narrow = &tile_q4_K_raw6_tile, .pack_rows = pack_q4_K_x2};    \
    _Static_assert(2 * RP <= TK_GEMM_MAX_TILE && RN <= TK_GEMM_MAX_TILE, "tile larger than tk_matmul_rows holds");
/* packed for many tokens; for at most 6, the file's rows */
Q4_K_X2_TILE(tile_q4_K_x2, Q4_K_X2_PAIRS, 4)
_Static_assert(sizeof(block_q4_K_x2) / 2 <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* half h of two rows' Q6_K super-blocks x0, x1: q[k] their 6-bit quants (0..63) of sub-block pair 4h + k, row 0 in
   the low 256 bits, row 1 in the high ones */
static inline AVX512 void q6_K_pair_half(const block_q6_K *x0, const block_q6_K *x1, int h, __m512i q[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(3);
    const __m512i l0 = two_ymm(load32(x0->ql + 64 * h), load32(x1->ql + 64 * h));
    const __m512i l1 = two_ymm(load32(x0->ql + 64 * h + 32), load32(x1->ql + 64 * h + 32));
    const __m512i hb = two_ymm(load32(x0->qh + 32 * h), load32(x1->qh + 32 * h));
    q[0] = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_slli_epi16(_mm512_and_si512(hb, m3), 4));
    q[1] = _mm512_or_si512(_mm512_and_si512(l1, m4),
                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 2), m3), 4));
    q[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4),
                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 4), m3), 4));
    q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4),
                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 6), m3), 4));
}

/* Q6_K tiles with two rows to a 512-bit register (row 0 in lanes 0-7, row 1 in lanes 8-15) and each token's
   activations broadcast to both halves: a half gets Q6_K_TILE's 256-bit operations for its row, lane for lane (the
   same integers, the same fused multiply-add per super-block), in half the instructions; the pair's quants are
   unpacked once for all RN tokens. */
#define Q6_K_TILE_512(NAME, RN, NARROW)                                                                       \
    AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) {   \
        __m512 acc[RN];                                                                                      \
        for (int t = 0; t < RN; t++) acc[t] = _mm512_setzero_ps();                                           \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            const block_q6_K *x0 = (const block_q6_K *)vx + b, *x1 = (const block_q6_K *)((const char *)x0 + bx); \
            const block_q8_K *y[RN];                                                                         \
            for (int o = 0; o < (int)sizeof *x0; o += 64) {                                                  \
                _mm_prefetch((const char *)x0 + PREFETCH + o, PREFETCH_HINT);                                \
                _mm_prefetch((const char *)x1 + PREFETCH + o, PREFETCH_HINT);                                \
            }                                                                                                \
            const __m128i sc0 = _mm_loadu_si128((const __m128i *)x0->scales);                                \
            const __m128i sc1 = _mm_loadu_si128((const __m128i *)x1->scales);                                \
            const struct scales16 sc16[2] = {scales16(sc0), scales16(sc1)};                                  \
            const __m512i sc = two_ymm(_mm256_cvtepi8_epi16(sc0), _mm256_cvtepi8_epi16(sc1));                \
            __m512i sumi[RN];                                                                                \
            for (int t = 0; t < RN; t++) {                                                                   \
                y[t] = (const block_q8_K *)((const char *)vy + t * by) + b;                                  \
                /* -32·Σ scale·bsum, as super_q6_K takes it off at the end (integers: order is free) */      \
                sumi[t] = _mm512_sub_epi32(_mm512_setzero_si512(),                                           \
                    _mm512_slli_epi32(_mm512_madd_epi16(_mm512_broadcast_i64x4(load32(y[t]->bsums)), sc), 5)); \
            }                                                                                                \
            for (int h = 0; h < 2; h++) {                                                                    \
                __m512i q[4];                                                                                \
                q6_K_pair_half(x0, x1, h, q);                                                                \
                for (int k = 0; k < 4; k++) {                                                                \
                    const __m512i scp = two_ymm(scale_pair(&sc16[0], 4 * h + k), scale_pair(&sc16[1], 4 * h + k)); \
                    for (int t = 0; t < RN; t++) {                                                           \
                        const __m512i q8 = _mm512_broadcast_i64x4(load32(y[t]->qs + 128 * h + 32 * k));      \
                        sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(q[k], q8), scp);         \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
            for (int t = 0; t < RN; t++)                                                                     \
                acc[t] = _mm512_fmadd_ps(two_scalars(y[t]->d * h2f(x0->d), y[t]->d * h2f(x1->d)),            \
                                         _mm512_cvtepi32_ps(sumi[t]), acc[t]);                               \
        }                                                                                                    \
        for (int t = 0; t < RN; t++) {                                                                       \
            store_row_pair(s + t, ls, acc[t]);                                                               \
        }                                                                                                    \
    }                                                                                                        \
    PACKED_TILE_ENTRY(NAME, 2, RN, NULL, 0, 0, NARROW)

Q6_K_TILE_512(tile_q6_K_zmm2, 2, NULL)  /* for a few tokens */
Q6_K_TILE_512(tile_q6_K_zmm4, 4, &tile_q6_K_zmm2_tile)
Q6_K_TILE_512(tile_q6_K_zmm, 6, &tile_q6_K_zmm4_tile)

/* Q6_K for many tokens: the row tile packed once by pack_q6_K_x2 into what the tiles above build per call, two rows
   to a register (q6_K_pair_half's quants, the scale pair of each sub-block pair, the scales widened for the block
   sums, both rows' d), so the loop is a vpmaddubsw and a vpdpwssd per (pair, token, sub-block pair): the same
   integers and the same fused multiply-add per super-block, so every result is the one-token kernel's. */
typedef struct { uint8_t q[8][64]; int16_t scp[8][32], sc[32]; float d[2]; } block_q6_K_x2;
#define Q6_K_X2_PAIR(p, b) ((const block_q6_K_x2 *)((const char *)vx + 2 * (p) * bx) + (b))
#define Q6_K_X2_PAIRS 3 /* the tile's rows: 3 pairs (6 x 4 tokens: faster than 4 x 6 here) */

static AVX512 void pack_q6_K_x2(const void *vx, size_t bx, int nr, void *dst, int64_t n) {
    static const block_q6_K zero_row;
    const int64_t nb = n / QK_K;
    for (int r = 0; r < 2 * Q6_K_X2_PAIRS; r += 2) {
        const block_q6_K *x0 = r < nr ? (const block_q6_K *)((const char *)vx + r * bx) : NULL;
        const block_q6_K *x1 = r + 1 < nr ? (const block_q6_K *)((const char *)vx + (r + 1) * bx) : NULL;
        block_q6_K_x2 *p = (block_q6_K_x2 *)dst + (r / 2) * nb;
        for (int64_t b = 0; b < nb; b++) {
            const block_q6_K *a = x0 ? x0 + b : &zero_row, *c = x1 ? x1 + b : &zero_row;
            for (int o = 0; o < (int)sizeof *a; o += 64) {
                _mm_prefetch((const char *)a + PREFETCH + o, PREFETCH_HINT);
                _mm_prefetch((const char *)c + PREFETCH + o, PREFETCH_HINT);
            }
            const __m128i sc0 = _mm_loadu_si128((const __m128i *)a->scales);
            const __m128i sc1 = _mm_loadu_si128((const __m128i *)c->scales);
            const struct scales16 sc16[2] = {scales16(sc0), scales16(sc1)};
            for (int h = 0; h < 2; h++) {
                __m512i q[4];
                q6_K_pair_half(a, c, h, q);
                for (int k = 0; k < 4; k++) {
                    _mm512_storeu_si512(p[b].q[4 * h + k], q[k]);
                    _mm512_storeu_si512(p[b].scp[4 * h + k],
                                        two_ymm(scale_pair(&sc16[0], 4 * h + k), scale_pair(&sc16[1], 4 * h + k)));
                }
            }
            _mm512_storeu_si512(p[b].sc, two_ymm(_mm256_cvtepi8_epi16(sc0), _mm256_cvtepi8_epi16(sc1)));
            p[b].d[0] = h2f(a->d);
            p[b].d[1] = h2f(c->d);
        }
    }
}

#define Q6_K_X2_TILE(NAME, RP, RN, NARROW)                                                                    \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        __m512 acc[RP][RN];                                                                                  \
        for (int p = 0; p < RP; p++)                                                                         \
            for (int t = 0; t < RN; t++) acc[p][t] = _mm512_setzero_ps();                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            const block_q8_K *y[RN];                                                                         \
            __m512i sumi[RP][RN];                                                                            \
            for (int t = 0; t < RN; t++) {                                                                   \
                y[t] = (const block_q8_K *)((const char *)vy + t * by) + b;                                  \
                const __m512i bs = _mm512_broadcast_i64x4(load32(y[t]->bsums));                              \
                /* -32·Σ scale·bsum, as super_q6_K takes it off at the end (integers: order is free) */      \
                for (int p = 0; p < RP; p++)                                                                 \
                    sumi[p][t] = _mm512_sub_epi32(_mm512_setzero_si512(),                                    \
                        _mm512_slli_epi32(_mm512_madd_epi16(bs, _mm512_loadu_si512(Q6_K_X2_PAIR(p, b)->sc)), 5)); \
            }                                                                                                \
            _Pragma("GCC unroll 8") for (int m = 0; m < 8; m++) {                                            \
                __m512i q[RP], scp[RP];                                                                      \
                for (int p = 0; p < RP; p++) {                                                               \
                    q[p] = _mm512_loadu_si512(Q6_K_X2_PAIR(p, b)->q[m]);                                     \
                    scp[p] = _mm512_loadu_si512(Q6_K_X2_PAIR(p, b)->scp[m]);                                 \
                }                                                                                            \
                for (int t = 0; t < RN; t++) {                                                               \
                    const __m512i q8 = _mm512_broadcast_i64x4(load32(y[t]->qs + 32 * m));                    \
                    for (int p = 0; p < RP; p++)                                                             \
                        sumi[p][t] = _mm512_dpwssd_epi32(sumi[p][t], _mm512_maddubs_epi16(q[p], q8), scp[p]); \
                }                                                                                            \
            }                                                                                                \
            for (int p = 0; p < RP; p++)                                                                     \
                for (int t = 0; t < RN; t++) {                                                               \
                    const float *d = Q6_K_X2_PAIR(p, b)->d;                                                  \
                    acc[p][t] = _mm512_fmadd_ps(two_scalars(y[t]->d * d[0], y[t]->d * d[1]),                 \
                                                _mm512_cvtepi32_ps(sumi[p][t]), acc[p][t]);                  \
                }                                                                                            \
        }                                                                                                    \
        for (int p = 0; p < RP; p++)                                                                         \
            for (int t = 0; t < RN; t++) {                                                                   \
                store_row_pair(s + 2 * p * ls + t, ls, acc[p][t]);                                           \
            }                                                                                                \
    }                                                                                                        \
    static const struct tk_gemm NAME##_tile = {.fn = NAME, .rows = 2 * RP, .cols = RN,                       \
                                               .pack_size = sizeof(block_q6_K_x2) / 2, .narrow = NARROW,      \
                                               .pack_rows = pack_q6_K_x2};                                    \
    _Static_assert(2 * RP <= TK_GEMM_MAX_TILE && RN <= TK_GEMM_MAX_TILE, "tile larger than tk_matmul_rows holds");
/* packed for many tokens; for at most 6, the file's rows */
Q6_K_X2_TILE(tile_q6_K_x2, Q6_K_X2_PAIRS, 4, &tile_q6_K_zmm_tile)
_Static_assert(sizeof(block_q6_K_x2) / 2 <= TK_GEMM_MAX_PACK, "packed block larger than tk_matmul_work holds");

/* BF16 at this level has an order of its own (the levels need not agree: it is no exact type), and so have F16's
   rows of a length that is no multiple of 32 (below): one 16-lane
   accumulator per (row, token), 16 elements a step, then the lanes summed as hsum8(low half + high half), then the
   elements past the last whole step one by one. One accumulator per pair is what lets a tile hold 5 × 5 of them, and
   its weight rows converted to F32 once for all its tokens (packed): per step, 5 conversions for 25 fused
   multiply-adds where ggml's order (four 8-lane accumulators) allowed 3 × 4 pairs and 14. The AVX2 level has its own
   order on the same plan (dot_avx2.c). */
static inline AVX512 __m512 load16_f16(const tk_half *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline AVX512 __m512 load16_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline AVX512 float lanes16_sum(__m512 acc) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(acc), upper8(acc)));
}

/* for one 16-bit float type (elements ET, LOAD16 16 of them as floats, TOF one): the one-row and two-row products,
   the row packing (to F32, exactly) and the tiles of RM rows × RN tokens, packed or on the file's rows */
#define FLOAT16_KERNELS(T, ET, LOAD16, TOF)                                                                   \
    /* one row (prefetched: generation's rows come from memory); two rows are two of these, one after the other:  \
       one stream at a time reads faster than two side by side (24 F16 matrices 5632 x 2048 from memory, 2 threads, \
       Zen 4: 29.5 -> 32.1 GB/s) */                                                                              \
    static AVX512 float dot_row_##T(int64_t n, const ET *x, const ET *y) {                                     \
        __m512 acc = _mm512_setzero_ps();                                                                     \
        int64_t i = 0;                                                                                        \
        for (; i + 16 <= n; i += 16) {                                                                        \
            _mm_prefetch((const char *)(x + i) + PREFETCH, PREFETCH_HINT);                                    \
            acc = _mm512_fmadd_ps(LOAD16(x + i), LOAD16(y + i), acc);                                         \
        }                                                                                                     \
        float sum = lanes16_sum(acc);                                                                         \
        for (; i < n; i++) sum += TOF(x[i]) * TOF(y[i]);                                                      \
        return sum;                                                                                           \
    }                                                                                                         \
    static AVX512 void dot_##T##_zmm(int64_t n, float *s, const void *vx, const void *vy) {                    \
        *s = dot_row_##T(n, vx, vy);                                                                          \
    }                                                                                                         \
    static AVX512 void dot2_##T##_zmm(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {        \
        s[0] = dot_row_##T(n, vx, vy);                                                                        \
        s[1] = dot_row_##T(n, (const ET *)((const char *)vx + bx), vy);                                       \
    }                                                                                                         \
    static AVX512 void pack_##T(const void *vx, void *dst, int64_t n) {                                       \
        const ET *x = vx;                                                                                     \
        float *d = dst;                                                                                       \
        int64_t i = 0;                                                                                        \
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, LOAD16(x + i));                                  \
        for (; i < n; i++) d[i] = TOF(x[i]);                                                                  \
    }                                                                                                         \
    FLOAT16_TILE(tile_##T##_packed5, 5, 5, ET, LOAD16, TOF, FLOAT16_PACKED_W, FLOAT16_PACKED_X)               \
    FLOAT16_TILE(tile_##T##_packed5x1, 5, 1, ET, LOAD16, TOF, FLOAT16_PACKED_W, FLOAT16_PACKED_X)             \
    FLOAT16_TILE(tile_##T##_packed5x2, 5, 2, ET, LOAD16, TOF, FLOAT16_PACKED_W, FLOAT16_PACKED_X)             \
    FLOAT16_TILE(tile_##T##_packed5x3, 5, 3, ET, LOAD16, TOF, FLOAT16_PACKED_W, FLOAT16_PACKED_X)             \
    FLOAT16_TILE(tile_##T##_packed5x4, 5, 4, ET, LOAD16, TOF, FLOAT16_PACKED_W, FLOAT16_PACKED_X)             \
    /* a prompt's last tokens past its whole tiles of 5 (128 tokens: 3) on the packed rows, instead of a tile of 5 \
       with zero tokens */                                                                                      \
    static const tk_gemm_fn tile_##T##_packed5_fewer[] = {tile_##T##_packed5x1, tile_##T##_packed5x2,          \
                                                         tile_##T##_packed5x3, tile_##T##_packed5x4};          \
    FLOAT16_TILE(tile_##T##_raw6, 4, 6, ET, LOAD16, TOF, FLOAT16_RAW_W, FLOAT16_RAW_X)                        \
    FLOAT16_TILE(tile_##T##_raw4, 4, 4, ET, LOAD16, TOF, FLOAT16_RAW_W, FLOAT16_RAW_X)                        \
    FLOAT16_TILE(tile_##T##_raw2, 4, 2, ET, LOAD16, TOF, FLOAT16_RAW_W, FLOAT16_RAW_X)                        \
    /* packed for many tokens; for at most 6, the file's rows (converting 4 rows costs what 4 × 2 products do) */ \
    static const struct tk_gemm tile_##T##_raw2_tile = {tile_##T##_raw2, 4, 2, NULL, 0, 0, NULL};             \
    static const struct tk_gemm tile_##T##_raw4_tile = {tile_##T##_raw4, 4, 4, NULL, 0, 0, &tile_##T##_raw2_tile}; \
    static const struct tk_gemm tile_##T##_raw6_tile = {tile_##T##_raw6, 4, 6, NULL, 0, 0, &tile_##T##_raw4_tile}; \
    static const struct tk_gemm tile_##T##_zmm_tile = {                                                       \
        .fn = tile_##T##_packed5, .rows = 5, .cols = 5, .pack = pack_##T, .pack_size = sizeof(float),         \
        .act_type = TK_##T##_ACT, .narrow = &tile_##T##_raw6_tile, .fewer = tile_##T##_packed5_fewer};

/* RM rows × RN tokens: W(r, i) the 16 weights of row r from element i as F32 and X(r, j) element j as a float, from
   the packed rows (F32) or the file's */
#define FLOAT16_TILE(NAME, RM, RN, ET, LOAD16, TOF, W, X)                                                         \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        __m512 acc[RM][RN];                                                                                  \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) acc[r][t] = _mm512_setzero_ps();                                    \
        int64_t i = 0;                                                                                       \
        for (; i + 16 <= n; i += 16) {                                                                       \
            __m512 w[RM];                                                                                    \
            for (int r = 0; r < RM; r++) w[r] = W(ET, LOAD16, TOF, r, i);                                    \
            for (int t = 0; t < RN; t++) {                                                                   \
                const __m512 a = LOAD16(ROW16(ET, vy, by, t) + i);                                           \
                for (int r = 0; r < RM; r++) acc[r][t] = _mm512_fmadd_ps(w[r], a, acc[r][t]);                \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < RM; r++)                                                                         \
            for (int t = 0; t < RN; t++) {                                                                   \
                const ET *y = ROW16(ET, vy, by, t);                                                          \
                float sum = lanes16_sum(acc[r][t]);                                                          \
                for (int64_t j = i; j < n; j++) sum += X(ET, LOAD16, TOF, r, j) * TOF(y[j]);                 \
                s[r * ls + t] = sum;                                                                         \
            }                                                                                                \
    }

#define PACKED_F32_ROW(r) ((const float *)((const char *)vx + (r) * bx))
#define FLOAT16_PACKED_W(ET, LOAD16, TOF, r, i) _mm512_loadu_ps(PACKED_F32_ROW(r) + (i))
#define FLOAT16_PACKED_X(ET, LOAD16, TOF, r, j) PACKED_F32_ROW(r)[j]
#define FLOAT16_RAW_W(ET, LOAD16, TOF, r, i) LOAD16(ROW16(ET, vx, bx, r) + (i))
#define FLOAT16_RAW_X(ET, LOAD16, TOF, r, j) TOF(ROW16(ET, vx, bx, r)[j])
/* the activations' type of each packed tile: the vec_dot_type, as the one-token kernels read */
#define TK_F16_ACT TK_F16
#define TK_BF16_ACT TK_BF16
FLOAT16_KERNELS(F16, tk_half, load16_f16, h2f)
FLOAT16_KERNELS(BF16, uint16_t, load16_bf16, bf2f)

/* F16 at this level has an order of its own, four chains per (row, token): chain c sums the elements k ≡ c (mod 4)
   of the first n - n % 4 by fused multiply-adds from zero, in order; the chains summed (c0 + c2) + (c1 + c3); the
   last n % 4 elements then by fused multiply-adds. A 512-bit register holds 4 rows' chains (lane 4i + c: row i's
   chain c), so that a tile multiplies 4 rows' next 4 weights by one token's next 4 activations broadcast to every
   row: no conversion in its loop, 16 rows × 6 tokens, 4 weight loads and 6 broadcasts to 24 fused multiply-adds. The
   rows are converted to F32 and transposed (a row's 4 weights to a 128-bit lane) once per row tile when packed (many
   tokens), per 16 weights on the file's rows (a few tokens, and one); the activations come as F32 (TK_F16X: each an
   F16's value). One 16-lane chain per (row, token), before, held 5 × 5 tiles converting 5 tokens per 16 elements:
   the conversions' uops bound it to 71% of the fused multiply-adds' peak (here 2 × 16 per cycle); this tile alone
   reaches 85-90% (its loop in a harness, 2048-5632 elements, tokens past L2: 92-100 against 111 GMAC/s, one thread).
   The activations F32 double a pass's bytes: the tile takes every token in one pass (one_pass), its 6 broadcasts a
   step coming as fast from L3. TinyLlama-shaped F16, 2 threads, alternating builds: prompt of 128 tokens 110-118 ->
   129-136 tok/s; generation 14.1-14.8 -> 15.2-15.5 (the one-token tile, F16X4_AHEAD). Chains of n / 4 sequential
   sums sit float rounding apart from ggml's order, further than the 16-lane chains: in a quantized file, where the
   F16 products feed 8-bit activations, a rounding within that of a tie flips (0.2 in stories260K's logits).
   Quantized files hold F16 rows where a quantized type would not fit the row: a length that is no multiple of 32.
   Those keep the 16-lane order (cols_multiple: the 64-wide model's perplexity moved 3e-3 from llama.cpp's with
   every row in four chains, its test allows 1e-3); every F16 file's rows of real models are multiples of 32. */

/* 16 elements from i of 4 F16 rows r[0..3] (lanes outside m[j] read as zero; m NULL: none) as 4 registers by chunk
   of 4 elements: out[c] lane 4j + l = row j's element i + 4c + l */
static inline AVX512 void f16x4_chunks(const tk_half *const r[4], const __mmask16 *m, int64_t i, __m512 out[4]) {
    __m512 v[4];
    for (int j = 0; j < 4; j++)
        v[j] = _mm512_cvtph_ps(m ? _mm256_maskz_loadu_epi16(m[j], r[j] + i)
                                 : _mm256_loadu_si256((const __m256i *)(r[j] + i)));
    const __m512 lo01 = _mm512_shuffle_f32x4(v[0], v[1], 0x44), lo23 = _mm512_shuffle_f32x4(v[2], v[3], 0x44),
                 hi01 = _mm512_shuffle_f32x4(v[0], v[1], 0xEE), hi23 = _mm512_shuffle_f32x4(v[2], v[3], 0xEE);
    out[0] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
    out[1] = _mm512_shuffle_f32x4(lo01, lo23, 0xDD);
    out[2] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
    out[3] = _mm512_shuffle_f32x4(hi01, hi23, 0xDD);
}

/* the four chains of 4 rows (acc) summed, (c0 + c2) + (c1 + c3): out[j] row j's */
static inline AVX512 void f16x4_sums(__m512 acc, float out[4]) {
    const __m512 pairs = _mm512_add_ps(acc, _mm512_permute_ps(acc, 0x4E));  /* lane c: c + (c ^ 2) */
    float l[16];
    _mm512_storeu_ps(l, _mm512_add_ps(pairs, _mm512_permute_ps(pairs, 0xB1)));
    for (int j = 0; j < 4; j++) out[j] = l[4 * j];
}

/* 16 rows packed: chunk c of rows 4g..4g+3 (f16x4_chunks' out[c]) at floats (4c + g)·16, then each row's last n % 4
   weights, row after row; rows from nr on zero */
static AVX512 void pack_f16x4(const void *vx, size_t bx, int nr, void *dst, int64_t n) {
    float *d = dst;
    const int64_t n4 = n - n % 4, nt = n - n4;
    for (int g = 0; g < 4; g++) {
        const tk_half *r[4];
        __mmask16 live[4], m[4];
        for (int j = 0; j < 4; j++) {
            r[j] = ROW16(tk_half, vx, bx, 4 * g + j < nr ? 4 * g + j : 0);
            live[j] = 4 * g + j < nr ? 0xFFFF : 0;
        }
        for (int64_t i = 0; i < n4; i += 16) {
            const int k = n4 - i < 16 ? (int)(n4 - i) : 16;
            for (int j = 0; j < 4; j++) m[j] = live[j] & (__mmask16)((1u << k) - 1);
            __m512 ch[4];
            f16x4_chunks(r, m, i, ch);
            for (int c = 0; c < k / 4; c++) _mm512_storeu_ps(d + (i + 4 * c + g) * 16, ch[c]);
        }
    }
    float *tail = d + 16 * n4;
    for (int row = 0; row < 16; row++)
        for (int64_t k = 0; k < nt; k++) tail[row * nt + k] = row < nr ? h2f(ROW16(tk_half, vx, bx, row)[n4 + k]) : 0.0f;
}

#define F16X_ROW(t) ((const float *)((const char *)vy + (t) * by))
/* the accumulators of G groups of 4 rows × RN tokens into s, with the rows' last n % 4 elements (W(row, k): weight k of
   the row as a float) */
#define F16X4_FINISH(G, RN, W)                                                                                    \
    for (int g = 0; g < G; g++)                                                                                   \
        for (int t = 0; t < RN; t++) {                                                                            \
            float sums[4];                                                                                        \
            f16x4_sums(acc[g][t], sums);                                                                          \
            for (int j = 0; j < 4; j++) {                                                                         \
                const int row = 4 * g + j;                                                                        \
                float sum = sums[j];                                                                              \
                for (int64_t k = n4; k < n; k++) sum = fmaf(W(row, k), F16X_ROW(t)[k], sum);                      \
                s[row * ls + t] = sum;                                                                            \
            }                                                                                                     \
        }

/* 16 packed rows × RN tokens */
#define F16X4_PACKED_TILE(NAME, RN)                                                                               \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        (void)bx;                                                                                                 \
        const float *w = vx, *tail = w + 16 * (n - n % 4);                                                        \
        const int64_t n4 = n - n % 4;                                                                             \
        __m512 acc[4][RN];                                                                                        \
        for (int g = 0; g < 4; g++)                                                                               \
            for (int t = 0; t < RN; t++) acc[g][t] = _mm512_setzero_ps();                                         \
        for (int64_t i = 0; i < n4; i += 4) {                                                                     \
            __m512 wv[4];                                                                                         \
            for (int g = 0; g < 4; g++) wv[g] = _mm512_loadu_ps(w + (i + g) * 16);                                \
            for (int t = 0; t < RN; t++) {                                                                        \
                const __m512 a = _mm512_broadcast_f32x4(_mm_loadu_ps(F16X_ROW(t) + i));                           \
                for (int g = 0; g < 4; g++) acc[g][t] = _mm512_fmadd_ps(wv[g], a, acc[g][t]);                     \
            }                                                                                                     \
        }                                                                                                         \
        F16X4_FINISH(4, RN, F16X4_PACKED_W)                                                                       \
    }
#define F16X4_PACKED_W(row, k) tail[(row) * (n - n4) + (k) - n4]

/* G groups of 4 of the file's rows × RN tokens, prefetched (generation's rows come from memory) */
#define F16X4_RAW_TILE(NAME, G, RN)                                                                               \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        const int64_t n4 = n - n % 4;                                                                             \
        const tk_half *r[G][4];                                                                                   \
        for (int g = 0; g < G; g++)                                                                               \
            for (int j = 0; j < 4; j++) r[g][j] = ROW16(tk_half, vx, bx, 4 * g + j);                              \
        /* the rows F16X4_AHEAD rows on (they follow this tile's in the file) fetched into L2 as one linear stream
           at the pace the tile reads its own (Q4_0X16_AHEAD's plan): a line per row and 32 elements */                \
        const char *ahead = (const char *)vx + F16X4_AHEAD * bx;                                                  \
        __m512 acc[G][RN];                                                                                        \
        for (int g = 0; g < G; g++)                                                                               \
            for (int t = 0; t < RN; t++) acc[g][t] = _mm512_setzero_ps();                                         \
        int64_t i = 0;                                                                                            \
        for (; i + 32 <= n4; i += 32) {                                                                           \
            for (int q = 0; q < 4 * G; q++) _mm_prefetch(ahead + 2 * 4 * G * i + 64 * q, PREFETCH_HINT);          \
            F16X4_RAW_STEP(G, RN, i, NULL, 16)                                                                    \
            F16X4_RAW_STEP(G, RN, i + 16, NULL, 16)                                                               \
        }                                                                                                         \
        for (; i < n4; i += 16) {                                                                                 \
            const int k = n4 - i < 16 ? (int)(n4 - i) : 16;                                                       \
            const __mmask16 m[4] = {(__mmask16)((1u << k) - 1), (__mmask16)((1u << k) - 1),                      \
                                    (__mmask16)((1u << k) - 1), (__mmask16)((1u << k) - 1)};                      \
            F16X4_RAW_STEP(G, RN, i, m, k)                                                                        \
        }                                                                                                         \
        F16X4_FINISH(G, RN, F16X4_RAW_W)                                                                          \
    }
/* the K elements from I (a multiple of 4, at most 16) of every row, masks M (NULL: all 16) */
#define F16X4_RAW_STEP(G, RN, I, M, K)                                                                            \
    for (int g = 0; g < G; g++) {                                                                                 \
        __m512 ch[4];                                                                                             \
        f16x4_chunks(r[g], M, I, ch);                                                                             \
        for (int c = 0; c < (K) / 4; c++)                                                                         \
            for (int t = 0; t < RN; t++)                                                                          \
                acc[g][t] = _mm512_fmadd_ps(ch[c], _mm512_broadcast_f32x4(_mm_loadu_ps(F16X_ROW(t) + (I) + 4 * c)), \
                                            acc[g][t]);                                                           \
    }
/* The one-token tile's 4 rows are 4 short streams (a row of 2048 is a page): the rows 2 tiles on fetched as one
   linear stream at its pace (Q4_0X16_AHEAD's plan) generate 15.2-15.5 tok/s (above), each row's own next tile's
   13.3-13.7, 4 tiles on 14.2-14.6, 1 tile on 13.0-13.2, none 10.8-11.1; 8-row tiles (16 lines a step) 11.8-12.0. */
#define F16X4_AHEAD 8
#define F16X4_RAW_W(row, k) h2f(r[(row) / 4][(row) % 4][k])

F16X4_PACKED_TILE(tile_f16x4_p6, 6)
F16X4_PACKED_TILE(tile_f16x4_p5, 5)
F16X4_PACKED_TILE(tile_f16x4_p4, 4)
F16X4_PACKED_TILE(tile_f16x4_p3, 3)
F16X4_PACKED_TILE(tile_f16x4_p2, 2)
F16X4_PACKED_TILE(tile_f16x4_p1, 1)
F16X4_RAW_TILE(tile_f16x4_raw6, 1, 6)
F16X4_RAW_TILE(tile_f16x4_raw4, 1, 4)
F16X4_RAW_TILE(tile_f16x4_raw2, 1, 2)
F16X4_RAW_TILE(tile_f16x4_raw1, 1, 1)
/* the last partial token tile of a pass, on the packed rows */
static const tk_gemm_fn tile_f16x4_fewer[] = {tile_f16x4_p1, tile_f16x4_p2, tile_f16x4_p3, tile_f16x4_p4,
                                              tile_f16x4_p5};
/* packed for many tokens; for at most 6, the file's rows; one token, 16 of them */
static const struct tk_gemm tile_f16x4_raw1_tile = {tile_f16x4_raw1, 4, 1, NULL, 0, TK_F16X, NULL};
static const struct tk_gemm tile_f16x4_raw2_tile = {tile_f16x4_raw2, 4, 2, NULL, 0, TK_F16X, &tile_f16x4_raw1_tile};
static const struct tk_gemm tile_f16x4_raw4_tile = {tile_f16x4_raw4, 4, 4, NULL, 0, TK_F16X, &tile_f16x4_raw2_tile};
static const struct tk_gemm tile_f16x4_raw6_tile = {tile_f16x4_raw6, 4, 6, NULL, 0, TK_F16X, &tile_f16x4_raw4_tile};
static const struct tk_gemm tile_f16x4_tile = {.fn = tile_f16x4_p6, .rows = 16, .cols = 6, .pack_size = sizeof(float),
                                               .act_type = TK_F16X, .narrow = &tile_f16x4_raw6_tile,
                                               .pack_rows = pack_f16x4, .fewer = tile_f16x4_fewer, .one_pass = 1,
                                               .cols_multiple = 32, .other = &tile_F16_zmm_tile};

/* ---------------------------------------------------------------------------------------------- two rows, one token */
/* Generation's two-row products (LEGACY_DOT2 of dot_avx2.c) for Q8_0: the blocks of both rows in one 512-bit
   register (row 0 in lanes 0-7, row 1 in lanes 8-15) against the activation block in both halves. Each half holds
   the 256-bit kernel's integer lanes (computed with vpdpbusd instead of the sign trick: the same integers) and gets
   its float operations, lane for lane: acc + (d_x·d_y)·lanes, one fused multiply-add per block, then ggml's 8-lane
   sum. So each result is the one-row kernel's, bit for bit, in half the instructions. */

/* [a ×8 | b ×8] · c, each product the scalar one */
static inline AVX512 __m512 row_scales(tk_half da, tk_half db, tk_half dy) {
    const float y = tk_fp16_table[dy];
    return two_scalars(tk_fp16_table[da] * y, tk_fp16_table[db] * y);
}

/* the nibbles of two Q4_0 blocks as bytes: [a's 32 | b's 32], each in element order (low nibbles, then high) */
static inline AVX512 __m512i two_nibble_blocks(const uint8_t *a, const uint8_t *b) {
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                                 _mm_loadu_si128((const __m128i *)b), 1);
    const __m512i twice = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3),
                                                   _mm512_castsi256_si512(both));
    /* the second copy of each (128-bit lanes 1 and 3) shifted to its high nibbles */
    return _mm512_and_si512(_mm512_mask_srli_epi16(twice, 0xFF00FF00u, twice, 4), _mm512_set1_epi8(0x0F));
}

/* Q4_0: lanes Σ q·y - 8·Σy, the -8·Σy of the activation block made once for both rows */
static inline AVX512 __m512i q4_0_lanes(const block_q4_0 *x0, const block_q4_0 *x1, __m512i y2) {
    const __m512i e = _mm512_sub_epi32(_mm512_setzero_si512(),
                                       dpbusd_zmm(_mm512_setzero_si512(), _mm512_set1_epi8(8), y2));
    return dpbusd_zmm(e, two_nibble_blocks(x0->qs, x1->qs), y2);
}

/* Q8_0: lanes (y + 128)·x - 128·Σx = Σ x·y */
static inline AVX512 __m512i q8_0_lanes(const block_q8_0 *x0, const block_q8_0 *x1, __m512i y2) {
    const __m512i w = two_blocks(x0->qs, x1->qs);
    const __m512i c = _mm512_sub_epi32(_mm512_setzero_si512(),
                                       dpbusd_zmm(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), w));
    return dpbusd_zmm(c, _mm512_xor_si512(y2, _mm512_set1_epi8((char)0x80)), w);
}

#define LEGACY_DOT2_ZMM(NAME, XT, LANES)                                                                      \
    AVX512 void NAME(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {                        \
        const XT *x0 = vx, *x1 = (const XT *)((const char *)vx + bx);                                         \
        const block_q8_0 *y = vy;                                                                             \
        __m512 acc = _mm512_setzero_ps();                                                                     \
        for (int64_t b = 0; b < n / QK; b++) {                                                                \
            _mm_prefetch((const char *)&x0[b] + PREFETCH, PREFETCH_HINT);                                     \
            _mm_prefetch((const char *)&x1[b] + PREFETCH, PREFETCH_HINT);                                     \
            const __m512i y2 = _mm512_broadcast_i64x4(load32(y[b].qs));                                       \
            acc = _mm512_fmadd_ps(row_scales(x0[b].d, x1[b].d, y[b].d),                                       \
                                  _mm512_cvtepi32_ps(LANES(&x0[b], &x1[b], y2)), acc);                        \
        }                                                                                                     \
        s[0] = hsum8(_mm512_castps512_ps256(acc)) + 0.0f; /* + the 256-bit kernel's (zero) sum of mins */     \
        s[1] = hsum8(upper8(acc)) + 0.0f;                                                                     \
    }

static LEGACY_DOT2_ZMM(dot2_q8_0_q8_0_zmm, block_q8_0, q8_0_lanes)

/* four blocks' two-row lanes (row 0 in lanes 0-7, row 1 in 8-15) summed per block and row: row 0's four sums in
   lanes 0-3, row 1's in lanes 8-11 (integer adds, exact in any order) */
static inline AVX512 __m512i pair_block_sums4(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
    const __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
    const __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
    const __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    return _mm512_add_epi32(c, _mm512_shuffle_i32x4(c, c, _MM_SHUFFLE(2, 3, 0, 1)));
}

/* Q4_0 in block-sum order (dot.c's dot_q4_0_q8_0): both rows' lanes of four blocks at once, summed per block and
   row, then each row's four float steps in order */
static AVX512 void dot2_q4_0_q8_0_zmm(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {
    const block_q4_0 *x0 = vx, *x1 = (const block_q4_0 *)((const char *)vx + bx);
    const block_q8_0 *y = vy;
    const int64_t nb = n / QK;
    float acc0 = 0, acc1 = 0;
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)&x0[b] + PREFETCH, PREFETCH_HINT);
        _mm_prefetch((const char *)&x1[b] + PREFETCH, PREFETCH_HINT);
        _mm_prefetch((const char *)&x0[b + 3] + PREFETCH, PREFETCH_HINT);
        _mm_prefetch((const char *)&x1[b + 3] + PREFETCH, PREFETCH_HINT);
        __m512i v[4];
        for (int k = 0; k < 4; k++)
            v[k] = q4_0_lanes(&x0[b + k], &x1[b + k], _mm512_broadcast_i64x4(load32(y[b + k].qs)));
        float f[16];
        _mm512_storeu_ps(f, _mm512_cvtepi32_ps(pair_block_sums4(v[0], v[1], v[2], v[3])));
        for (int k = 0; k < 4; k++) {
            const float dy = tk_fp16_table[y[b + k].d];
            acc0 = fmaf(f[k], tk_fp16_table[x0[b + k].d] * dy, acc0);
            acc1 = fmaf(f[8 + k], tk_fp16_table[x1[b + k].d] * dy, acc1);
        }
    }
    for (; b < nb; b++) {
        const __m512i v = q4_0_lanes(&x0[b], &x1[b], _mm512_broadcast_i64x4(load32(y[b].qs)));
        const float dy = tk_fp16_table[y[b].d];
        acc0 = fmaf((float)lanes_isum(_mm512_castsi512_si256(v)), tk_fp16_table[x0[b].d] * dy, acc0);
        acc1 = fmaf((float)lanes_isum(_mm512_extracti64x4_epi64(v, 1)), tk_fp16_table[x1[b].d] * dy, acc1);
    }
    s[0] = acc0;
    s[1] = acc1;
}

/* GCC gives a local array of 64 bytes or more a 64-byte alignment and stores to it with aligned moves, but under
   AddressSanitizer's detect_stack_use_after_return (make test-sanitize) the array's fake frame may put it at 32 mod
   64, where such a move faults (dot2_iq3_s_q8_K_zmm's grid indices did): with p's alignment hidden from the
   compiler, the stores through it are unaligned ones */
#define ALIGNMENT_UNKNOWN(p) __asm__("" : "+r"(p))

/* 8 float lanes of a and 8 of b */
static inline AVX512 __m512 halves_ps(float a, float b) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(a)),
                                               _mm256_castps_pd(_mm256_set1_ps(b)), 1));
}

/* 32 bytes of row 0 at p0 and 32 of row 1 at p1 as the halves of one register */
static inline AVX512 __m512i halves_epi8(const void *p0, const void *p1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load32(p0)), load32(p1), 1);
}

/* Q5_K, two rows × NT tokens: the AVX2 kernel (dot_avx2.c, dot_q5_K: ggml's AVX2 order) with each row in one half
   of a 512-bit register and each token's activations broadcast to both: per (row, token) the same int32 lanes, the
   same fused multiply-add by d per super-block and the same scalar mins term, so its bits; the rows' quants and
   scales are unpacked once for all NT tokens. NT = 1 is the one-token kernel (dot2_q5_K_q8_K_zmm). */
#define Q5_K_ZMM(NAME, NT)                                                                                    \
    static AVX512 void NAME(int64_t n, float *s, size_t ls, const void *vx, size_t bx, const void *vy, size_t by) { \
        const block_q5_K *x[2] = {vx, (const block_q5_K *)((const char *)vx + bx)};                          \
        const __m512i m4 = _mm512_set1_epi8(0x0F), one = _mm512_set1_epi8(1);                                \
        __m512 acc[NT];                                                                                      \
        float summs[2][NT];                                                                                  \
        for (int t = 0; t < NT; t++) {                                                                       \
            acc[t] = _mm512_setzero_ps();                                                                    \
            summs[0][t] = summs[1][t] = 0;                                                                   \
        }                                                                                                    \
        for (int64_t b = 0; b < n / QK_K; b++) {                                                             \
            __m256i sc[2];                                                                                   \
            for (int r = 0; r < 2; r++) {                                                                    \
                _mm_prefetch((const char *)&x[r][b] + PREFETCH, PREFETCH_HINT);                              \
                const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(x[r][b].scales)); /* [sc0..7|m0..7] */ \
                for (int t = 0; t < NT; t++) {                                                               \
                    const block_q8_K *y = ROW16(block_q8_K, vy, by, t) + b;                                  \
                    summs[r][t] += q5_K_mins_term(_mm256_extracti128_si256(sm, 1), y, y->d * h2f(x[r][b].dmin)); \
                }                                                                                            \
                sc[r] = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));                             \
            }                                                                                                \
            /* the int16 scales of row 0 in both 128-bit lanes of the low half, row 1's in the high half's */ \
            const __m512i scv = _mm512_inserti64x4(_mm512_castsi256_si512(sc[0]), sc[1], 1);                 \
            __m512i h = halves_epi8(x[0][b].qh, x[1][b].qh);                                                 \
            __m512i sumi[NT];                                                                                \
            for (int t = 0; t < NT; t++) sumi[t] = _mm512_setzero_si512();                                  \
            for (int j = 0; j < 4; j++) {                                                                    \
                const __m512i q = halves_epi8(x[0][b].qs + 32 * j, x[1][b].qs + 32 * j);                     \
                __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);    \
                lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(h, one), 4));                    \
                hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 1), one), 4)); \
                h = _mm512_srli_epi16(h, 2);                                                                 \
                /* int16 scale of sub-block k in every lane: bytes 2k, 2k + 1 of the row's scales */              \
                const __m512i scl = _mm512_shuffle_epi8(scv, _mm512_set1_epi16((short)(0x0100 + 0x0404 * j)));  \
                const __m512i sch = _mm512_shuffle_epi8(scv, _mm512_set1_epi16((short)(0x0302 + 0x0404 * j)));  \
                for (int t = 0; t < NT; t++) {                                                               \
                    const int8_t *q8 = (ROW16(block_q8_K, vy, by, t) + b)->qs + 64 * j;                      \
                    const __m512i pl = _mm512_madd_epi16(                                                    \
                        _mm512_maddubs_epi16(lo, _mm512_broadcast_i64x4(load32(q8))), scl);                  \
                    const __m512i ph = _mm512_madd_epi16(                                                    \
                        _mm512_maddubs_epi16(hi, _mm512_broadcast_i64x4(load32(q8 + 32))), sch);             \
                    sumi[t] = _mm512_add_epi32(sumi[t], _mm512_add_epi32(pl, ph));                           \
                }                                                                                            \
            }                                                                                                \
            for (int t = 0; t < NT; t++) {                                                                   \
                const float dy = (ROW16(block_q8_K, vy, by, t) + b)->d;                                      \
                acc[t] = _mm512_fmadd_ps(halves_ps(dy * h2f(x[0][b].d), dy * h2f(x[1][b].d)),                \
                                         _mm512_cvtepi32_ps(sumi[t]), acc[t]);                               \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < NT; t++) {                                                                       \
            s[t] = hsum8(_mm512_castps512_ps256(acc[t])) + summs[0][t];                                      \
            s[ls + t] = hsum8(upper8(acc[t])) + summs[1][t];                                                 \
        }                                                                                                    \
    }
Q5_K_ZMM(q5_K_zmm1, 1)
Q5_K_ZMM(tile_q5_K_zmm4, 4)
Q5_K_ZMM(tile_q5_K_zmm8, 8)
static AVX512 void dot2_q5_K_q8_K_zmm(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {
    q5_K_zmm1(n, s, 1, vx, bx, vy, 0);
}
/* for 8 tokens and more; for 4 to 7 one tile of 4 (padded) */
static const struct tk_gemm tile_q5_K_zmm4_tile = {tile_q5_K_zmm4, 2, 4, NULL, 0, 0, NULL, NULL};
static const struct tk_gemm tile_q5_K_zmm_tile = {tile_q5_K_zmm8, 2, 8, NULL, 0, 0, &tile_q5_K_zmm4_tile, NULL};

/* 32 activations in both halves, negated where a sign bit is set: bit j of the 4 bytes at s0 for byte j of the low
   half, of those at s1 for the high half (as the AVX2 kernels' sign bytes do: -(-128) stays -128 both ways) */
static inline AVX512 __m512i signed_halves(const int8_t *q8, const uint8_t *s0, const uint8_t *s1) {
    uint32_t m0, m1;
    memcpy(&m0, s0, 4);
    memcpy(&m1, s1, 4);
    const __m512i a = _mm512_broadcast_i64x4(load32(q8));
    return _mm512_mask_sub_epi8(a, _cvtu64_mask64((uint64_t)m0 | (uint64_t)m1 << 32), _mm512_setzero_si512(), a);
}

/* IQ2_S, two rows: each row's 32 weights of a sub-block in one half of a 512-bit register, so that the lanes are
   the AVX2 kernel's (quants_iq2_avx2.c: lane l of a row holds bytes 4l..4l+3 of every 32 weights times their scale,
   exact int32 sums, one fused multiply-add by d per super-block into eight float lanes) and the bits its. The grid
   indices of a super-block are computed in vectors first; a sub-block then takes its 8 grid points as broadcast loads
   (a gather was slower here), its 64 sign bits as a mask (a set bit negates the activation, as the AVX2 kernel's sign
   bytes do) and both rows' 4-bit scales by one permutation of a register made once per super-block. One token of a
   5632 × 2048 IQ2_S matrix from L2, one thread: 1.26 ms with the AVX2 kernel, 0.80 ms. */
static AVX512 void dot2_iq2_s_q8_K_zmm(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {
    const block_iq2_s *x[2] = {vx, (const block_iq2_s *)((const char *)vx + bx)};
    const block_q8_K *y = vy;
    /* grid index e of a row: qs[e] | (qh[e / 4] << (8 - 2 (e % 4))) & 0x300, 32 of them as 16-bit lanes */
    const __m512i qh_pick = _mm512_set_epi16(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2,
                                             1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i qh_shift = _mm512_set_epi16(2, 4, 6, 8, 2, 4, 6, 8, 2, 4, 6, 8, 2, 4, 6, 8, 2, 4, 6, 8, 2, 4, 6, 8,
                                              2, 4, 6, 8, 2, 4, 6, 8);
    /* 16-bit lanes 0..7 take scale 2ib of row 0, 8..15 scale 2ib + 1, 16..31 row 1's (at 16 + ...) */
    const __m512i scale_pick = _mm512_set_epi16(17, 17, 17, 17, 17, 17, 17, 17, 16, 16, 16, 16, 16, 16, 16, 16,
                                                1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        uint16_t gi_stack[2][QK_K / 8], (*gi)[QK_K / 8] = gi_stack;
        ALIGNMENT_UNKNOWN(gi);
        uint64_t sc[2];
        for (int r = 0; r < 2; r++) {
            const block_iq2_s *b = &x[r][i];
            _mm_prefetch((const char *)b + PREFETCH, PREFETCH_HINT);
            uint64_t qh;
            memcpy(&qh, b->qh, 8);
            memcpy(&sc[r], b->scales, 8);
            const __m512i hi = _mm512_permutexvar_epi16(qh_pick, _mm512_castsi256_si512(_mm256_cvtepu8_epi16(
                                                                     _mm_cvtsi64_si128((long long)qh))));
            const __m512i lo = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)b->qs));
            _mm512_storeu_si512(gi[r], _mm512_or_si512(lo, _mm512_and_si512(_mm512_sllv_epi16(hi, qh_shift),
                                                                            _mm512_set1_epi16(0x300))));
        }
        /* 2 × 4-bit scale + 1 of both rows as 16-bit lanes: row r's scale j (j = 2ib + half) at 16r + j */
        const __m512i sb = _mm512_cvtepu8_epi32(_mm_set_epi64x((long long)sc[1], (long long)sc[0]));
        const __m512i nib = _mm512_or_si512(_mm512_and_si512(sb, _mm512_set1_epi32(0xf)),
                                            _mm512_slli_epi32(_mm512_srli_epi32(sb, 4), 16));
        const __m512i scales = _mm512_add_epi16(_mm512_slli_epi16(nib, 1), _mm512_set1_epi16(1));
        const int8_t *q8 = y[i].qs;
        __m512i sum = _mm512_setzero_si512();
        for (int ib = 0; ib < QK_K / 32; ++ib, q8 += 32) {
            const uint16_t *k0 = gi[0] + 4 * ib, *k1 = gi[1] + 4 * ib;
            __m512i grid = _mm512_set1_epi64((long long)tk_iq2s_grid[k0[0]]);
            for (int e = 1; e < 8; e++) {
                const uint16_t k = e < 4 ? k0[e] : k1[e - 4];
                grid = _mm512_mask_set1_epi64(grid, (__mmask8)(1u << e), (long long)tk_iq2s_grid[k]);
            }
            const __m512i as = signed_halves(q8, x[0][i].qs + QK_K / 8 + 4 * ib, x[1][i].qs + QK_K / 8 + 4 * ib);
            const __m512i sc_ib = _mm512_permutexvar_epi16(
                _mm512_add_epi16(scale_pick, _mm512_set1_epi16((short)(2 * ib))), scales);
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(_mm512_maddubs_epi16(grid, as), sc_ib));
        }
        const float dy = y[i].d;
        acc = _mm512_fmadd_ps(halves_ps(tk_fp16_table[x[0][i].d] * dy, tk_fp16_table[x[1][i].d] * dy),
                              _mm512_cvtepi32_ps(sum), acc);
    }
    s[0] = 0.125f * hsum8(_mm512_castps512_ps256(acc));
    s[1] = 0.125f * hsum8(upper8(acc));
}

/* IQ3_S, two rows, on IQ2_S's plan: the AVX2 kernel's lanes (quants_iq3_avx2.c) with a row in each half, the 16 grid
   points (4 weights each) of a sub-block as broadcast loads from indices computed per super-block, the sign bits as
   a mask, both rows' 2·scale + 1 by one permutation; the same exact int32 lanes and float steps, so its bits. */
static AVX512 void dot2_iq3_s_q8_K_zmm(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {
    const block_iq3_s *x[2] = {vx, (const block_iq3_s *)((const char *)vx + bx)};
    const block_q8_K *y = vy;
    /* 16-bit lanes 0..15 take the scale of sub-block ib of row 0 (at ib), 16..31 row 1's (at 8 + ib) */
    const __m512i scale_pick = _mm512_set_epi32(0x00080008, 0x00080008, 0x00080008, 0x00080008, 0x00080008,
                                                0x00080008, 0x00080008, 0x00080008, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        /* grid index e of a row: qs[e] + 256 · bit e of qh */
        uint16_t gi_stack[2][QK_K / 4], (*gi)[QK_K / 4] = gi_stack;
        ALIGNMENT_UNKNOWN(gi);
        uint32_t sc[2];
        for (int r = 0; r < 2; r++) {
            const block_iq3_s *b = &x[r][i];
            _mm_prefetch((const char *)b + PREFETCH, PREFETCH_HINT);
            uint64_t qh;
            memcpy(&qh, b->qh, 8);
            memcpy(&sc[r], b->scales, 4);
            for (int half = 0; half < 2; half++) {
                const __m512i lo = _mm512_cvtepu8_epi16(load32(b->qs + 32 * half));
                _mm512_storeu_si512(gi[r] + 32 * half, _mm512_mask_add_epi16(lo, (__mmask32)(qh >> 32 * half), lo,
                                                                            _mm512_set1_epi16(0x100)));
            }
        }
        /* 2 × 4-bit scale + 1: sub-block ib of row r at 16-bit lane 8r + ib */
        const __m256i sb = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)((uint64_t)sc[0] | (uint64_t)sc[1] << 32)));
        const __m256i nib = _mm256_or_si256(_mm256_and_si256(sb, _mm256_set1_epi32(0xf)),
                                            _mm256_slli_epi32(_mm256_srli_epi32(sb, 4), 16));
        const __m512i scales = _mm512_castsi256_si512(_mm256_add_epi16(_mm256_slli_epi16(nib, 1), _mm256_set1_epi16(1)));
        const int8_t *q8 = y[i].qs;
        __m512i sum = _mm512_setzero_si512();
        for (int ib = 0; ib < QK_K / 32; ++ib, q8 += 32) {
            const uint16_t *k0 = gi[0] + 8 * ib, *k1 = gi[1] + 8 * ib;
            __m512i grid = _mm512_set1_epi32((int)tk_iq3s_grid[k0[0]]);
            for (int e = 1; e < 16; e++) {
                const uint16_t k = e < 8 ? k0[e] : k1[e - 8];
                grid = _mm512_mask_set1_epi32(grid, (__mmask16)(1u << e), (int)tk_iq3s_grid[k]);
            }
            const __m512i as = signed_halves(q8, x[0][i].signs + 4 * ib, x[1][i].signs + 4 * ib);
            const __m512i sc_ib = _mm512_permutexvar_epi16(
                _mm512_add_epi16(scale_pick, _mm512_set1_epi16((short)ib)), scales);
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(_mm512_maddubs_epi16(grid, as), sc_ib));
        }
        const float dy = y[i].d;
        acc = _mm512_fmadd_ps(halves_ps(tk_fp16_table[x[0][i].d] * dy, tk_fp16_table[x[1][i].d] * dy),
                              _mm512_cvtepi32_ps(sum), acc);
    }
    s[0] = hsum8(_mm512_castps512_ps256(acc));
    s[1] = hsum8(upper8(acc));
}

/* IQ4_XS, two rows: a sub-block (32 values) of both rows in one 512-bit register (row 0 in lanes 0-7, row 1 in
   8-15), looked up from the value table + 128 as unsigned bytes, one vpdpbusd with the activation bytes broadcast to
   both halves, times each row's sub-block scale (vpmulld); the +128 comes off once per super-block as
   128·Σ scale·(sum of the sub-block's activations, from the Q8_K block sums). Every integer is exact, so each row's
   super-block sum is the AVX2 kernel's, and so is its float step (fmaf per super-block, quants_iq_avx2.c). */
static AVX512 void dot2_iq4_xs_q8_K_zmm(int64_t n, float *s, const void *vx, size_t bx, const void *vy) {
    const block_iq4_xs *x0 = vx, *x1 = (const block_iq4_xs *)((const char *)vx + bx);
    const block_q8_K *y = vy;
    const __m512i table = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tk_iq4nl_values)),
                                           _mm512_set1_epi8((char)0x80));
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    /* per 128-bit chunk: the low nibbles (elements 0-15) of a row's 16 bytes, then the high ones (16-31) */
    const __m512i nibble_shift = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
    const __m512i sub_shift_l = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    const __m512i sub_shift_h = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14);
    float acc0 = 0, acc1 = 0;
    for (int64_t b = 0; b < n / QK_K; b++) {
        for (int o = 0; o < (int)sizeof *x0; o += 64) {
            _mm_prefetch((const char *)&x0[b] + PREFETCH + o, PREFETCH_HINT);
            _mm_prefetch((const char *)&x1[b] + PREFETCH + o, PREFETCH_HINT);
        }
        /* the 16 scales (row 0's sub-blocks in lanes 0-7, row 1's in 8-15), 6 bits each, minus 32 */
        uint32_t l0, l1;
        memcpy(&l0, x0[b].scales_l, 4);
        memcpy(&l1, x1[b].scales_l, 4);
        const __m512i sl = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32((int)l0), _mm512_set1_epi32((int)l1));
        const __m512i sh = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(x0[b].scales_h),
                                                   _mm512_set1_epi32(x1[b].scales_h));
        const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(sl, sub_shift_l), _mm512_set1_epi32(15));
        const __m512i hi = _mm512_and_si512(_mm512_srlv_epi32(sh, sub_shift_h), _mm512_set1_epi32(3));
        const __m512i ls = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
        /* -128 · scale · (the sub-block's activation sum), lane for lane */
        const __m256i q = _mm256_madd_epi16(load32(y[b].bsums), _mm256_set1_epi16(1));
        const __m512i minus128q = _mm512_slli_epi32(_mm512_sub_epi32(_mm512_setzero_si512(), two_ymm(q, q)), 7);
        __m512i sum = _mm512_mullo_epi32(ls, minus128q);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const __m512i raw = _mm512_mask_broadcast_i32x4(
                _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(x0[b].qs + 16 * ib))), 0xFF00,
                _mm_loadu_si128((const __m128i *)(x1[b].qs + 16 * ib)));
            const __m512i v = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srlv_epi64(raw, nibble_shift), m4));
            const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v,
                                                  _mm512_broadcast_i64x4(load32(y[b].qs + 32 * ib)));
            /* sub-block ib's scale of each row in its half */
            const __m512i pick = _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8),
                                                  _mm512_set1_epi32(ib));
            sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(d, _mm512_permutexvar_epi32(pick, ls)));
        }
        const float dy = y[b].d;
        acc0 = fmaf(tk_fp16_table[x0[b].d] * dy, (float)lanes_isum(_mm512_castsi512_si256(sum)), acc0);
        acc1 = fmaf(tk_fp16_table[x1[b].d] * dy, (float)lanes_isum(_mm512_extracti64x4_epi64(sum, 1)), acc1);
    }
    s[0] = acc0;
    s[1] = acc1;
}

tk_vec_dot_fn tk_vec_dot_avx512(int wtype) {
    return wtype == TK_F16 ? dot_F16_zmm : wtype == TK_BF16 ? dot_BF16_zmm : NULL;
}

tk_vec_dot2_fn tk_vec_dot2_avx512(int wtype) {
    switch (wtype) {
    case TK_F16: return dot2_F16_zmm;
    case TK_BF16: return dot2_BF16_zmm;
    case TK_Q4_0: return dot2_q4_0_q8_0_zmm;
    case TK_Q8_0: return dot2_q8_0_q8_0_zmm;
    case TK_Q5_K: return dot2_q5_K_q8_K_zmm;
    case TK_IQ2_S: return dot2_iq2_s_q8_K_zmm;
    case TK_IQ3_S: return dot2_iq3_s_q8_K_zmm;
    case TK_IQ4_XS: return dot2_iq4_xs_q8_K_zmm;
    default: return NULL;
    }
}

/* ---------------------------------------------------------------------------------------------- tile table */

const struct tk_gemm *tk_gemm_avx512(int wtype) {
    switch (wtype) {
    case TK_F16: return &tile_f16x4_tile;
    case TK_BF16: return &tile_BF16_zmm_tile;
    case TK_Q4_0: return &tile_q4_0x16_8_tile;
    case TK_Q8_0: return &tile_q8_0_zmm_tile;
    case TK_Q4_K: return &tile_q4_K_x2_tile;
    case TK_Q5_K: return &tile_q5_K_zmm_tile;
    case TK_Q6_K: return &tile_q6_K_x2_tile;
    default: return NULL;
    }
}

#endif
