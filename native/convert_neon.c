/* ARM64 NEON version of convert.c's F32 / F16 / BF16 element conversion (ARMv8.0: every ARM64 CPU), giving the scalar
   loop's bits for every input: FCVTL / FCVTN round to nearest even as the scalar code does, and NaN lanes are
   rewritten as the scalar code writes them (payload kept, not quieted on the way to f32; quiet bit set on the way to
   f16) whatever the FPCR's default-NaN mode. BF16 rounds with integer operations, as convert.c's AVX2 path does. */
#include <string.h>
#include "quants.h"

#if defined(__aarch64__)
#include <arm_neon.h>

static inline float32x4_t f16x4_to_f32(uint16x4_t h) {
    const float32x4_t f = vcvt_f32_f16(vreinterpret_f16_u16(h));
    /* NaN: sign | 0x7f800000 | man << 13 */
    const uint32x4_t u = vmovl_u16(h);
    const uint32x4_t nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fff)), vdupq_n_u32(0x7c00));
    const uint32x4_t bits = vorrq_u32(vshlq_n_u32(vandq_u32(u, vdupq_n_u32(0x8000)), 16),
                                      vorrq_u32(vdupq_n_u32(0x7f800000u), vshlq_n_u32(vandq_u32(u, vdupq_n_u32(0x3ff)), 13)));
    return vbslq_f32(nan, vreinterpretq_f32_u32(bits), f);
}

static inline uint16x4_t f32_to_f16x4(float32x4_t v) {
    const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(v));
    /* NaN: sign | 0x7e00 | (ax >> 13) & 0x3ff */
    const uint32x4_t x = vreinterpretq_u32_f32(v);
    const uint32x4_t ax = vandq_u32(x, vdupq_n_u32(0x7fffffffu));
    const uint16x4_t nan = vmovn_u32(vcgtq_u32(ax, vdupq_n_u32(0x7f800000u)));
    const uint32x4_t q = vorrq_u32(vandq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(0x8000)),
                                   vorrq_u32(vdupq_n_u32(0x7e00), vandq_u32(vshrq_n_u32(ax, 13), vdupq_n_u32(0x3ff))));
    return vbsl_u16(nan, vmovn_u32(q), h);
}

static inline uint16x4_t f32_to_bf16x4(float32x4_t v) {
    const uint32x4_t x = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(1));
    const uint32x4_t r = vshrq_n_u32(vaddq_u32(vaddq_u32(x, vdupq_n_u32(0x7fff)), lsb), 16);
    const uint32x4_t nan = vcgtq_u32(vandq_u32(x, vdupq_n_u32(0x7fffffffu)), vdupq_n_u32(0x7f800000u));
    const uint32x4_t qnan = vorrq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(64));
    return vmovn_u32(vbslq_u32(nan, qnan, r));
}

/* n elements from src (type st) to dst (type dt), st != dt, all of F32, F16, BF16. Returns how many it converted
   (a multiple of 4); the caller converts the rest with the scalar loop. */
size_t tk_convert_neon(const void *src, enum tk_type st, void *dst, enum tk_type dt, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v;
        if (st == TK_F32) v = vld1q_f32((const float *)src + i);
        else if (st == TK_F16) v = f16x4_to_f32(vld1_u16((const uint16_t *)src + i));
        else v = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)src + i), 16));
        if (dt == TK_F32) vst1q_f32((float *)dst + i, v);
        else if (dt == TK_F16) vst1_u16((uint16_t *)dst + i, f32_to_f16x4(v));
        else vst1_u16((uint16_t *)dst + i, f32_to_bf16x4(v));
    }
    return i;
}

#endif
