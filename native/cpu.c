/* The run-time choice of instruction-set level for every kernel: what the CPU has (cpuid on x86; the kernel's
   hardware capabilities on Linux/ARM64, sysctl on macOS), lowered by TOOLKIT_FORCE_SCALAR, TOOLKIT_NO_VNNI,
   TOOLKIT_NO_AVX512 and the tests' tk_set_isa_limit; and the size of a core's L2 cache, which the matmul driver blocks
   for. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core.h"

#if defined(__x86_64__) || defined(__i386__)
#define TK_X86 1
#endif

#if defined(__aarch64__)
#define TK_ARM64 1
#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#else
#define TK_ARM64 0
#endif

static int force_scalar = -1;

void tk_set_force_scalar(int on) { force_scalar = on ? 1 : 0; }

/* highest instruction-set level the kernels may use (tests lower it): 1 AVX2, 2 + AVX-VNNI, 3 + AVX512-VNNI on x86;
   1 NEON, 2 + dotprod, 3 + i8mm on ARM64 */
static int isa_limit = 3;

void tk_set_isa_limit(int level) { isa_limit = level < 1 ? 1 : level > 3 ? 3 : level; }

static int scalar_forced(void) {
    if (force_scalar < 0) {
        const char *e = getenv("TOOLKIT_FORCE_SCALAR");
        force_scalar = (e && *e && strcmp(e, "0") != 0) ? 1 : 0;
    }
    return force_scalar;
}

/* ARM64: NEON is part of every ARM64 CPU, so the SIMD paths are always there */
int tk_use_simd(void) { return !scalar_forced() && (TK_ARM64 || tk_cpu_has_f16c()); }

#if TK_ARM64
/* 1 NEON, 2 + dotprod (sdot/udot, FEAT_DotProd), 3 + i8mm (smmla, FEAT_I8MM), from the kernel's hardware capabilities
   (Linux) or sysctl (macOS); NEON alone elsewhere */
static int arm_cpu_level(void) {
    static int level = 0;
    if (level) return level;
    int dp = 0, mm = 0;
#if defined(__linux__)
    dp = (getauxval(AT_HWCAP) >> 20) & 1;  /* HWCAP_ASIMDDP */
    mm = (getauxval(AT_HWCAP2) >> 13) & 1; /* HWCAP2_I8MM */
#elif defined(__APPLE__)
    int v = 0;
    size_t size = sizeof v;
    dp = sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &size, NULL, 0) == 0 && v;
    v = 0;
    size = sizeof v;
    mm = sysctlbyname("hw.optional.arm.FEAT_I8MM", &v, &size, NULL, 0) == 0 && v;
#endif
    level = 1 + dp + (dp && mm);
    return level;
}

int tk_arm_level(void) {
    if (scalar_forced()) return 0;
    const int cpu = arm_cpu_level();
    return cpu < isa_limit ? cpu : isa_limit;
}
#endif

int tk_use_vnni(void) {
#if defined(__x86_64__) || defined(__i386__)
    static int vnni = -1;
    if (vnni < 0) vnni = __builtin_cpu_supports("avxvnni") && getenv("TOOLKIT_NO_VNNI") == NULL;
    return vnni && isa_limit >= 2 && tk_use_simd();
#else
    return 0;
#endif
}

int tk_use_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    static int avx512 = -1;
    if (avx512 < 0)
        avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni") &&
                 getenv("TOOLKIT_NO_AVX512") == NULL;
    return avx512 && isa_limit >= 3 && tk_use_simd();
#else
    return 0;
#endif
}

int tk_cpu_has_f16c(void) {
#ifdef TK_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* read by every matmul thread, found by the first: relaxed atomics (each finds the same value) */
static long l2_bytes = -1;

void tk_set_l2_bytes(size_t bytes) { __atomic_store_n(&l2_bytes, bytes ? (long)bytes : -1, __ATOMIC_RELAXED); }

size_t tk_l2_bytes(void) {
    long l2 = __atomic_load_n(&l2_bytes, __ATOMIC_RELAXED);
    if (l2 < 0) {
#ifdef _SC_LEVEL2_CACHE_SIZE
        const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#else
        const long v = 0;
#endif
        l2 = v >= 65536 ? v : 512 * 1024; /* unknown (not reported, as in some VMs and on macOS): the common size */
        __atomic_store_n(&l2_bytes, l2, __ATOMIC_RELAXED);
    }
    return (size_t)l2;
}
