/* The instruction-set levels of the native core's kernels, as the C test drivers (kernel_check.c, forward_check.c)
   walk them: 0 the scalar paths, then x86 AVX2 / AVX-VNNI / AVX512-VNNI or ARM64 NEON / dotprod / i8mm (the levels of
   core.h's tk_set_isa_limit). */
#ifndef TOOLKIT_TEST_LEVELS_H
#define TOOLKIT_TEST_LEVELS_H

#include "quants.h"

#if defined(__aarch64__)
static const char *LEVEL_NAMES[4] = {"scalar", "neon", "dotprod", "i8mm"};
#else
static const char *LEVEL_NAMES[4] = {"scalar", "avx2", "avxvnni", "avx512vnni"};
#endif

/* the level the kernels use now (after tk_set_isa_limit), 0 when only the scalar paths run */
static int current_level(void) {
    if (!tk_use_simd()) return 0;
#if defined(__aarch64__)
    return tk_arm_level();
#else
    return tk_use_avx512() ? 3 : tk_use_vnni() ? 2 : 1;
#endif
}

#endif
