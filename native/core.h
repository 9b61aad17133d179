/* toolkit native core: shared by the converter, the quantizer and the runtime. Depends on nothing but libc. */
#ifndef TOOLKIT_CORE_H
#define TOOLKIT_CORE_H

#include <stddef.h>
#include <stdint.h>

/* Element types, numbered as ggml numbers them (and as GGUF tensor infos store them). */
enum tk_type {
    TK_F32 = 0,
    TK_F16 = 1,
    TK_Q4_0 = 2,
    TK_Q4_1 = 3,
    TK_Q5_0 = 6,
    TK_Q5_1 = 7,
    TK_Q8_0 = 8,
    TK_Q8_1 = 9,
    TK_Q2_K = 10,
    TK_Q3_K = 11,
    TK_Q4_K = 12,
    TK_Q5_K = 13,
    TK_Q6_K = 14,
    TK_Q8_K = 15,
    TK_IQ2_XXS = 16,
    TK_IQ2_XS = 17,
    TK_IQ3_XXS = 18,
    TK_IQ1_S = 19,
    TK_IQ4_NL = 20,
    TK_IQ3_S = 21,
    TK_IQ2_S = 22,
    TK_IQ4_XS = 23,
    TK_TQ1_0 = 34,
    TK_TQ2_0 = 35,
    TK_IQ1_M = 29,
    TK_BF16 = 30,
    TK_TYPE_COUNT = 36,
    TK_Q8_KX = 64, /* internal, never a file's type: the activations of the Q4_K tiles (quants.h) */
    TK_Q8_KP = 65, /* internal: the activations of AVX512's one-token Q4_K kernel (quants.h) */
    TK_Q8_K16 = 66, /* internal: the activations of the IQ tiles on 16-bit tokens (quants.h) */
    TK_F16X = 67, /* internal: the activations of AVX512's F16 tiles, F32 values each an F16's (quants.h) */
    TK_Q8_0S = 68, /* internal: the activations of AVX512's Q8_0 tile, Q8_0 with its sums of 4 (quants.h) */
};

/* Scalar conversions (round to nearest even, as ggml and numpy do). */
float tk_fp16_to_fp32(uint16_t h);
uint16_t tk_fp32_to_fp16(float f);
float tk_bf16_to_fp32(uint16_t b);
uint16_t tk_fp32_to_bf16(float f);

/* True when this CPU has the SIMD paths the core was built with (detected at run time). */
int tk_cpu_has_f16c(void);
/* The bytes of one core's L2 cache (as the C library reports it; 512 KiB when it does not). */
size_t tk_l2_bytes(void);
/* Set the L2 size the driver blocks for (tests: several passes over the rows with few tokens); 0: the CPU's again. */
void tk_set_l2_bytes(size_t bytes);
/* Force the portable scalar paths (also set by TOOLKIT_FORCE_SCALAR=1 in the environment). */
void tk_set_force_scalar(int on);
/* Cap the SIMD kernels at 1 AVX2, 2 AVX-VNNI, 3 AVX512-VNNI on x86, 1 NEON, 2 dotprod, 3 i8mm on ARM64 (the default:
   the best the CPU has). */
void tk_set_isa_limit(int level);
/* ARM64 builds: the level the kernels use now, 1 NEON, 2 + dotprod, 3 + i8mm (the CPU's, capped by tk_set_isa_limit),
   0 when the scalar paths are forced */
int tk_arm_level(void);

/* Convert n elements between F32, F16 and BF16 using up to nthreads threads. Returns 0, or -1 for an
   unsupported pair of types. */
int tk_convert(const void *src, enum tk_type src_type, void *dst, enum tk_type dst_type, size_t n, int nthreads);
/* ARM64 builds (convert_neon.c): the scalar loop's bits for the first elements of n, four at a time; returns how many */
size_t tk_convert_neon(const void *src, enum tk_type src_type, void *dst, enum tk_type dst_type, size_t n);

/* Number of NaN/Inf elements among n values of type t (F32, F16, BF16); -1 for other types. */
int64_t tk_count_nonfinite(const void *src, enum tk_type t, size_t n);

/* Run fn(arg, i, n) for i in 0..n-1 on n concurrent threads of the core's persistent pool (the calling thread runs
   i = 0); n is nthreads, or fewer when threads cannot be had. Returns n. */
typedef void (*tk_task_fn)(void *arg, int i, int n);
int tk_parallel(tk_task_fn fn, void *arg, int nthreads);

/* Read n bytes with nthreads threads (memory-bandwidth probe); returns a checksum. */
uint64_t tk_read_bytes(const void *p, size_t n, int nthreads);

/* Spin barrier for the n threads of one tk_parallel call (n as the task was told). */
#include <stdatomic.h>
struct tk_barrier { atomic_int count; atomic_int phase; };
void tk_barrier_init(struct tk_barrier *b);
void tk_barrier_wait(struct tk_barrier *b, int n);

/* Weights are read once per generated token, straight from the mapped file: the one-token kernels fetch them this
   many bytes ahead into L2 (prefetcht1), across the page boundaries where the hardware prefetcher stops, and the
   bandwidth probe (tk_read_bytes) reads so too. 2 threads on an AMD EPYC (Zen 4), one token of 24 matrices
   5632 x 2048 from memory, GB/s: 4 KiB ahead into L1 (the earlier setting) Q4_K 15.7, Q6_K 16.7, Q8_0 19.6,
   F16 21.5; 8 KiB into L2 22.1, 28.8, 31.1, 31.5 (medians of 3 alternating runs). */
#define TK_PREFETCH_AHEAD 8192
#endif
