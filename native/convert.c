/* F32 / F16 / BF16 element conversion: scalar reference plus an F16C/AVX2 (x86) or NEON (ARM64, convert_neon.c) path
   chosen at run time (cpu.c). */
#include <stdlib.h>
#include <string.h>
#include "core.h"
#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TK_X86 1
#endif

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float tk_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));       /* inf / nan */
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);                                    /* signed zero */
        float v = (float)man * (1.0f / 16777216.0f);                            /* subnormal: man * 2^-24 */
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t tk_fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff);  /* nan stays nan (quiet) */
    if (ax >= 0x477ff000u) return sign | 0x7c00;                                 /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                                      /* result subnormal or zero */
        if (ax < 0x33000000u) return sign;                                       /* below half the smallest subnormal */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;                                                /* 14..24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t r = ax + 0xfffu + ((ax >> 13) & 1);                                 /* round to nearest even */
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

float tk_bf16_to_fp32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t tk_fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64);      /* quiet nan */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* ---- scalar loops ---- */

static void cvt_scalar(const void *src, enum tk_type st, void *dst, enum tk_type dt, size_t n) {
    const float *s32 = src; const uint16_t *s16 = src;
    float *d32 = dst; uint16_t *d16 = dst;
    for (size_t i = 0; i < n; i++) {
        float v = st == TK_F32 ? s32[i] : st == TK_F16 ? tk_fp16_to_fp32(s16[i]) : tk_bf16_to_fp32(s16[i]);
        if (dt == TK_F32) d32[i] = v;
        else if (dt == TK_F16) d16[i] = tk_fp32_to_fp16(v);
        else d16[i] = tk_fp32_to_bf16(v);
    }
}

#ifdef TK_X86
/* Eight lanes at a time; the tail goes through the scalar loop. */
__attribute__((target("avx2,f16c")))
static void cvt_avx2(const void *src, enum tk_type st, void *dst, enum tk_type dt, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v;
        if (st == TK_F32) v = _mm256_loadu_ps((const float *)src + i);
        else if (st == TK_F16) v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i)));
        else v = _mm256_castsi256_ps(_mm256_slli_epi32(
                     _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i))), 16));
        if (dt == TK_F32) {
            _mm256_storeu_ps((float *)dst + i, v);
        } else if (dt == TK_F16) {
            _mm_storeu_si128((__m128i *)((uint16_t *)dst + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        } else {
            __m256i x = _mm256_castps_si256(v);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
            __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), 16);
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
                                             _mm256_set1_epi32(0x7f800000));
            __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(64));
            r = _mm256_blendv_epi8(r, qnan, nan);
            /* pack 8 x u32 (each < 2^16) into 8 x u16 */
            __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
            _mm_storeu_si128((__m128i *)((uint16_t *)dst + i), _mm_packus_epi32(lo, hi));
        }
    }
    if (i < n) {
        size_t ss = st == TK_F32 ? 4 : 2, ds = dt == TK_F32 ? 4 : 2;
        cvt_scalar((const char *)src + i * ss, st, (char *)dst + i * ds, dt, n - i);
    }
}
#endif

struct cvt_task { const void *src; enum tk_type st; void *dst; enum tk_type dt; size_t n; int simd; };

static void cvt_run(void *p, int i, int n) {
    struct cvt_task *t = p;
    size_t per = (t->n + (size_t)n - 1) / (size_t)n;
    per = (per + 63) & ~(size_t)63;
    size_t a = per * (size_t)i, b = a + per;
    if (a >= t->n) return;
    if (b > t->n) b = t->n;
    size_t ss = t->st == TK_F32 ? 4 : 2, ds = t->dt == TK_F32 ? 4 : 2;
    const void *s = (const char *)t->src + a * ss;
    void *d = (char *)t->dst + a * ds;
#ifdef TK_X86
    if (t->simd) { cvt_avx2(s, t->st, d, t->dt, b - a); return; }
#endif
#if defined(__aarch64__)
    if (t->simd) {
        const size_t done = tk_convert_neon(s, t->st, d, t->dt, b - a);
        s = (const char *)s + done * ss;
        d = (char *)d + done * ds;
        a += done;
    }
#endif
    cvt_scalar(s, t->st, d, t->dt, b - a);
}

static int known(enum tk_type t) { return t == TK_F32 || t == TK_F16 || t == TK_BF16; }

int tk_convert(const void *src, enum tk_type st, void *dst, enum tk_type dt, size_t n, int nthreads) {
    if (!known(st) || !known(dt)) return -1;
    if (st == dt) { memcpy(dst, src, n * (st == TK_F32 ? 4 : 2)); return 0; }
    struct cvt_task t = {src, st, dst, dt, n, tk_use_simd()};
    size_t min_per_thread = 1 << 16;
    if (nthreads < 1) nthreads = 1;
    if ((size_t)nthreads > n / min_per_thread) nthreads = (int)(n / min_per_thread) ? (int)(n / min_per_thread) : 1;
    tk_parallel(cvt_run, &t, nthreads);
    return 0;
}

/* Number of NaN/Inf elements in n values of type t (F32, F16 or BF16); -1 for other types. Integer tests on the
   exponent bits, which the compiler vectorizes. */
int64_t tk_count_nonfinite(const void *src, enum tk_type t, size_t n) {
    int64_t bad = 0;
    if (t == TK_F32) {
        const uint32_t *u = src;
        for (size_t i = 0; i < n; i++) bad += (u[i] & 0x7f800000u) == 0x7f800000u;
    } else if (t == TK_F16) {
        const uint16_t *u = src;
        for (size_t i = 0; i < n; i++) bad += (u[i] & 0x7c00u) == 0x7c00u;
    } else if (t == TK_BF16) {
        const uint16_t *u = src;
        for (size_t i = 0; i < n; i++) bad += (u[i] & 0x7f80u) == 0x7f80u;
    } else {
        return -1;
    }
    return bad;
}

/* Read n bytes (a multiple of 64) with nthreads threads, as a memory-bandwidth probe for the benchmarks; returns a
   checksum so the reads cannot be optimised away. It reads as the matrix kernels do, so that it measures what they
   could reach: 32-byte loads and the kernels' software prefetch (TK_PREFETCH_AHEAD, into L2); without the prefetch,
   8-byte loads measured some 20% less on an Intel host (19-21 against 24-26 GB/s, 2 threads), less than the F16
   kernels read. */
struct read_job { const uint8_t *p; size_t bytes; uint64_t sums[256]; };
typedef uint64_t read_vec __attribute__((vector_size(32)));

static void read_run(void *arg, int i, int n) {
    struct read_job *job = arg;
    const size_t per = job->bytes / (size_t)n / 128 * 128;
    const uint8_t *p = job->p + per * (size_t)i, *e = i == n - 1 ? job->p + job->bytes : p + per;
    read_vec s0 = {0}, s1 = s0, s2 = s0, s3 = s0, v;
    for (; p + 128 <= e; p += 128) {
        __builtin_prefetch(p + TK_PREFETCH_AHEAD, 0, 2);
        __builtin_prefetch(p + TK_PREFETCH_AHEAD + 64, 0, 2);
        memcpy(&v, p, 32), s0 ^= v;
        memcpy(&v, p + 32, 32), s1 ^= v;
        memcpy(&v, p + 64, 32), s2 ^= v;
        memcpy(&v, p + 96, 32), s3 ^= v;
    }
    for (; p + 64 <= e; p += 64) memcpy(&v, p, 32), s0 ^= v, memcpy(&v, p + 32, 32), s1 ^= v;
    s0 ^= s1 ^ s2 ^ s3;
    job->sums[i] = s0[0] ^ s0[1] ^ s0[2] ^ s0[3];
}

uint64_t tk_read_bytes(const void *p, size_t n, int nthreads) {
    static struct read_job job;
    job.p = p;
    job.bytes = n;
    if (nthreads > 256) nthreads = 256;
    const int used = tk_parallel(read_run, &job, nthreads);
    uint64_t s = 0;
    for (int i = 0; i < used; i++) s ^= job.sums[i];
    return s;
}
