/* ARM64 NEON version of the Q8_K quantizer (the activations of every k-quant product), byte for byte the reference's
   (quants_k.c): the same first element of largest magnitude, the same iscale, tk_nearest_int's mantissa trick lane by
   lane, exact 16-quant sums. The k-quant file quantizers (Q2_K..Q6_K) have no NEON version yet: ARM64 runs their
   reference. */
#include <math.h>
#include <string.h>
#include "quants.h"

#if defined(__aarch64__)
#include <arm_neon.h>

/* min(127, tk_nearest_int(v)) on 4 lanes */
static inline int32x4_t nearest_max127(float32x4_t v) {
    const int32x4_t i = vreinterpretq_s32_f32(vaddq_f32(v, vdupq_n_f32(12582912.f)));
    const int32x4_t n = vsubq_s32(vandq_s32(i, vdupq_n_s32(0x007fffff)), vdupq_n_s32(0x00400000));
    return vminq_s32(n, vdupq_n_s32(127));
}

static void quantize_block_q8_K_neon(const float *x, block_q8_K *y) {
    float32x4_t m = vabsq_f32(vld1q_f32(x));
    for (int i = 4; i < QK_K; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    const float amax = vmaxvq_f32(m);
    if (!(amax > 0)) {  /* the reference: no element with |x| > 0 */
        memset(y, 0, sizeof *y);
        return;
    }
    int j = 0;
    while (fabsf(x[j]) != amax) j++;  /* the first one, as the reference's strict > scan keeps */
    const float iscale = -127.f / x[j];
    for (int g = 0; g < QK_K / 16; g++) {
        int32x4_t q[4];
        for (int k = 0; k < 4; k++) q[k] = nearest_max127(vmulq_n_f32(vld1q_f32(x + 16 * g + 4 * k), iscale));
        const int16x8_t a = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1])), b = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
        const int8x16_t qs = vcombine_s8(vmovn_s16(a), vmovn_s16(b));
        vst1q_s8(y->qs + 16 * g, qs);
        y->bsums[g] = (int16_t)vaddlvq_s8(qs);
    }
    y->d = 1 / iscale;
}

void quantize_row_q8_K_neon(const float *x, void *vy, int64_t k) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; ++i) quantize_block_q8_K_neon(x + i * QK_K, y + i);
}

#endif
