#!/usr/bin/env bash
# Guest instructions per weight of a one-token matrix product (generation) under qemu-aarch64, for the scalar path
# (TOOLKIT_FORCE_SCALAR=1), the NEON baseline (-cpu cortex-a53) and dotprod (-cpu max), from the difference of 3 and 1
# repetitions of a 2048x2048 product, built with -O3 as setup.py builds the core (tests/native/matmul_bench.c;
# instructions counted by tests/native/insn_plugin.c).
# Then guest instructions per generated token of stories260K's forward pass (tests/native/forward_check.c, one token
# per call, from the difference of 20 and 4 tokens) on the reference bundle's files, same three configurations.
# Instruction counts, not speed: wall-clock on real ARM hardware is not measured by this.
# Usage: insn_counts.sh OUTDIR [BUNDLE]
set -euo pipefail
out=${1:-build/arm64}
bundle=${2:-build/native-ref}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
cc -shared -fPIC -O2 -Wall tests/native/insn_plugin.c -o "$out/insn_plugin.so"
${ARM64_CC:-aarch64-linux-gnu-gcc} -static -std=c11 -O3 -ffp-contract=off -fno-math-errno -Wall -Wno-unused-function \
    -Inative tests/native/matmul_bench.c $(ls native/*.c | grep -v module.c) -lm -pthread -o "$out/matmul_bench"
${ARM64_CC:-aarch64-linux-gnu-gcc} -static -std=c11 -O3 -ffp-contract=off -fno-math-errno -Wall -Wno-unused-function \
    -Inative tests/native/forward_check.c $(ls native/*.c | grep -v module.c) -lm -pthread -o "$out/forward_bench"
count() {  # env cpu type reps -> instructions
    env $1 ${QEMU_ARM64:-qemu-aarch64} -cpu "$2" -d plugin -plugin "$out/insn_plugin.so" "$out/matmul_bench" "$3" 2048 2048 "$4" \
        2>&1 >/dev/null | sed -n 's/^insns //p'
}
printf '%-5s %12s %12s %12s   (instructions per weight, one token)\n' type scalar neon dotprod
for t in 0 1 30 2 3 6 7 8 10 11 12 13 14; do
    row=""
    for cfg in "TOOLKIT_FORCE_SCALAR=1 max" "TOOLKIT_FORCE_SCALAR=0 cortex-a53" "TOOLKIT_FORCE_SCALAR=0 max"; do
        set -- $cfg
        a=$(count "$1" "$2" $t 1); b=$(count "$1" "$2" $t 3)
        row="$row $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%12.2f", (b - a) / 2 / (2048 * 2048) }')"
    done
    name=$(${QEMU_ARM64:-qemu-aarch64} "$out/matmul_bench" $t 8 256 1 | cut -d' ' -f1)
    printf '%-5s%s\n' "$name" "$row"
done
tokens() {  # env cpu file n -> instructions
    env $1 ${QEMU_ARM64:-qemu-aarch64} -cpu "$2" -d plugin -plugin "$out/insn_plugin.so" "$out/forward_bench" \
        "$bundle" "$3" "$4" 2>&1 >/dev/null | sed -n 's/^insns //p'
}
printf '\n%-26s %12s %12s %12s   (instructions per token, stories260K generation)\n' file scalar neon dotprod
for f in $(sed -n 's/^model \([^ ]*\) .*/\1/p' "$bundle/cases.txt"); do
    row=""
    for cfg in "TOOLKIT_FORCE_SCALAR=1 max" "TOOLKIT_FORCE_SCALAR=0 cortex-a53" "TOOLKIT_FORCE_SCALAR=0 max"; do
        set -- $cfg
        a=$(tokens "$1" "$2" "$f" 4); b=$(tokens "$1" "$2" "$f" 20)
        row="$row $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%12.0f", (b - a) / 16 }')"
    done
    printf '%-26s%s\n' "$f" "$row"
done
