/* AVX2 of the IQ4_NL / IQ4_XS quantizer's searches (quants_iq.c): the 15 trial grids of a block of 32 in the lanes of
   two registers (each lane doing one grid's sums in the scalar order, element by element: mul, then add, no FMA), and
   the final indices eight elements at a time. The nearest value is found without bisection: with
   h = max(1, #{k < 15 : value[k] <= v}), the index is h - 1 when v - value[h-1] < value[h] - v, else h — what the
   scalar bisection returns for every v, the ends included. Same bits as the scalar path. */
#include "quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_x86.h"

struct iq4_table { __m256 lo8, hi8, v[15]; };

static inline AVX2 void iq4_table_init(struct iq4_table *t) {
    float f[16];
    for (int k = 0; k < 16; ++k) f[k] = tk_iq4nl_values[k];
    t->lo8 = _mm256_loadu_ps(f);
    t->hi8 = _mm256_loadu_ps(f + 8);
    for (int k = 0; k < 15; ++k) t->v[k] = _mm256_set1_ps(f[k]);
}

/* value[idx] for lane indices 0..15 */
static inline AVX2 __m256 iq4_lookup(const struct iq4_table *t, __m256i idx) {
    const __m256 a = _mm256_permutevar8x32_ps(t->lo8, idx), b = _mm256_permutevar8x32_ps(t->hi8, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

/* h = max(1, #{k < 15 : !(v < value[k])}): a NaN v counts every value, as the bisection ends at 15 for it */
static inline AVX2 __m256i iq4_upper(const struct iq4_table *t, __m256 v) {
    __m256i c = _mm256_setzero_si256();
    for (int k = 0; k < 15; ++k)
        c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(v, t->v[k], _CMP_NLT_UQ)));
    return _mm256_max_epi32(c, _mm256_set1_epi32(1));
}

/* the nearest value's index (as the scalar nearest_value) and, in *q, the value */
static inline AVX2 __m256i iq4_nearest(const struct iq4_table *t, __m256 v, __m256 *q) {
    const __m256i h = iq4_upper(t, v), l = _mm256_sub_epi32(h, _mm256_set1_epi32(1));
    const __m256 hv = iq4_lookup(t, h), lv = iq4_lookup(t, l);
    const __m256 take_lo = _mm256_cmp_ps(_mm256_sub_ps(v, lv), _mm256_sub_ps(hv, v), _CMP_LT_OQ);
    *q = _mm256_blendv_ps(hv, lv, take_lo);
    return _mm256_add_epi32(l, _mm256_andnot_si256(_mm256_castps_si256(take_lo), _mm256_set1_epi32(1)));
}

AVX2 void tk_iq4_try_sums_avx2(const float *x, const float *w, float max, int ntry, float *sumqx, float *sumq2) {
    struct iq4_table t;
    iq4_table_init(&t);
    float ids[16];
    for (int i = 0; i < 16; ++i) ids[i] = (float)((i < 2 * ntry + 1 ? i - ntry : ntry) + tk_iq4nl_values[0]) / max;
    const __m256 id0 = _mm256_loadu_ps(ids), id1 = _mm256_loadu_ps(ids + 8);
    __m256 qx0 = _mm256_setzero_ps(), q20 = _mm256_setzero_ps(), qx1 = _mm256_setzero_ps(), q21 = _mm256_setzero_ps();
    for (int j = 0; j < 32; ++j) {
        const __m256 xj = _mm256_set1_ps(x[j]), wj = _mm256_set1_ps(w[j]);
        __m256 q0, q1;
        iq4_nearest(&t, _mm256_mul_ps(id0, xj), &q0);
        iq4_nearest(&t, _mm256_mul_ps(id1, xj), &q1);
        const __m256 wq0 = _mm256_mul_ps(wj, q0), wq1 = _mm256_mul_ps(wj, q1);
        qx0 = _mm256_add_ps(qx0, _mm256_mul_ps(wq0, xj));
        q20 = _mm256_add_ps(q20, _mm256_mul_ps(wq0, q0));
        qx1 = _mm256_add_ps(qx1, _mm256_mul_ps(wq1, xj));
        q21 = _mm256_add_ps(q21, _mm256_mul_ps(wq1, q1));
    }
    float a[16], b[16];
    _mm256_storeu_ps(a, qx0);
    _mm256_storeu_ps(a + 8, qx1);
    _mm256_storeu_ps(b, q20);
    _mm256_storeu_ps(b + 8, q21);
    for (int i = 0; i < 2 * ntry + 1; ++i) {
        sumqx[i] = a[i];
        sumq2[i] = b[i];
    }
}

AVX2 void tk_iq4_indices_avx2(const float *x, float id, int n, uint8_t *L) {
    struct iq4_table t;
    iq4_table_init(&t);
    const __m256 vid = _mm256_set1_ps(id);
    for (int j = 0; j < n; j += 8) {
        __m256 q;
        const __m256i l = iq4_nearest(&t, _mm256_mul_ps(vid, _mm256_loadu_ps(x + j)), &q);
        int32_t li[8];
        _mm256_storeu_si256((__m256i *)li, l);
        for (int k = 0; k < 8; ++k) L[j + k] = (uint8_t)li[k];
    }
}

#endif
