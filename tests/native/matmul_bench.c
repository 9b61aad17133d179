/* One-token matrix products for instruction counts (tests/native/insn_counts.sh): `matmul_bench TYPE ROWS COLS REPS`
   fills a ROWS x COLS weight matrix of TYPE (random quants, fp16 scales in a sane range) and one activation row, then
   runs tk_matmul on one thread REPS times. The counts of two REPS values differ by the cost of the products alone. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "quants.h"

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s TYPE ROWS COLS REPS\n", argv[0]);
        return 2;
    }
    const int t = atoi(argv[1]);
    const int64_t rows = atoll(argv[2]), cols = atoll(argv[3]);
    const int reps = atoi(argv[4]);
    const struct tk_type_traits *tr = tk_traits(t);
    if (!tr || !tk_dot_traits(t) || cols % tr->block_size) return 2;
    const size_t wb = tk_row_size(t, cols);
    uint8_t *w = malloc(wb * (size_t)rows);
    float *x = malloc(sizeof(float) * (size_t)cols), *y = malloc(sizeof(float) * (size_t)rows);
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < wb * (size_t)rows; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        w[i] = (uint8_t)s;
    }
    /* sane values where the bytes are floats or scales: every fp16/bf16 element or block scale a small number */
    const uint16_t one = t == TK_BF16 ? 0x3f80 : 0x3c00;
    if (t == TK_F32)
        for (int64_t i = 0; i < rows * cols; i++) ((float *)w)[i] = 0.5f;
    else if (t == TK_F16 || t == TK_BF16)
        for (int64_t i = 0; i < rows * cols; i++) ((uint16_t *)w)[i] = one;
    else {
        size_t off = 0;  /* the first fp16 field of the block (and the second where there is one) */
        if (t == TK_Q2_K) off = offsetof(block_q2_K, d);
        if (t == TK_Q3_K) off = offsetof(block_q3_K, d);
        if (t == TK_Q6_K) off = offsetof(block_q6_K, d);
        const int two = t == TK_Q4_1 || t == TK_Q5_1 || t == TK_Q2_K || t == TK_Q4_K || t == TK_Q5_K;
        for (size_t b = 0; b < (size_t)(rows * cols / tr->block_size); b++) {
            memcpy(w + b * tr->type_size + off, &one, 2);
            if (two) memcpy(w + b * tr->type_size + off + 2, &one, 2);
        }
    }
    for (int64_t i = 0; i < cols; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    double sum = 0;
    for (int r = 0; r < reps; r++) {
        if (tk_matmul(t, w, rows, cols, x, 1, y, 1)) return 1;
        sum += y[r % rows];
    }
    printf("%s %lldx%lld x%d: %g\n", tr->name, (long long)rows, (long long)cols, reps, sum);
    return 0;
}
