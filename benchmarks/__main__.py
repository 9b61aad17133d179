"""`python -m benchmarks --data DIR [--quick]`: every benchmark, each printing ours against llama.cpp's."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import convert, grammar, models, quant, quantize, run, serve, serve_concurrent


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--data", type=Path, default=Path("bench-data"), help="where checkpoints and outputs go")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the 16 GB CodeShell-7B-shaped conversion")
    ap.add_argument("--only", choices=["convert", "quantize", "run", "serve", "serve-concurrent", "grammar", "models",
                                       "quant"],
                    help="run one benchmark (serve: both serving benchmarks)")
    ap.add_argument("--moe-layers", type=int, default=16,
                    help="layers of the Qwen3-30B-A3B-shaped model in the models benchmark (48: the whole model)")
    ap.add_argument("--quant-layers", type=int, default=quant.TINYLLAMA_LAYERS,
                    help="layers of the TinyLlama-shaped model in the quant benchmark (fewer: a quick check)")
    ap.add_argument("--serve-tokens", type=int, default=serve_concurrent.N_GEN,
                    help="tokens each request generates in the serve-concurrent benchmark (fewer: a quick check)")
    ap.add_argument("--big", action="store_true",
                    help="add the CodeShell-7B-shaped Q4_0 and Q4_K_M rows to the models benchmark (set-up: ~24 GB of "
                         "disk at the peak, ~5 minutes, once)")
    ap.add_argument("--llama-cpp-codeshell", action="store_true",
                    help="also run llama.cpp's converter on the CodeShell-7B-shaped checkpoint (slow, needs ~16 GB RAM)")
    args = ap.parse_args()
    if args.only in (None, "convert"):
        convert.run(args.data, repeat=args.repeat, codeshell=not args.quick,
                    llama_cpp_codeshell=args.llama_cpp_codeshell)
    if args.only in (None, "quantize"):
        quantize.run(args.data, repeat=args.repeat)
    if args.only in (None, "run"):
        run.run(args.data, repeat=args.repeat)
    if args.only in (None, "serve"):
        serve.run(args.data, repeat=args.repeat)
    if args.only in (None, "serve", "serve-concurrent"):
        serve_concurrent.run(args.data, repeat=args.repeat, n_gen=args.serve_tokens)
    if args.only in (None, "grammar"):
        grammar.run(args.data, repeat=args.repeat)
    if args.only in (None, "models"):
        models.run(args.data, repeat=args.repeat, moe_layers=args.moe_layers, big=args.big)
    if args.only in (None, "quant"):
        quant.run(args.data, repeat=args.repeat, layers=args.quant_layers)


if __name__ == "__main__":
    main()
