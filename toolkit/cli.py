"""`toolkit` command line: one small function per subcommand that parses flags and calls the library."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from server.limits import Limits
from toolkit.ui import TensorProgress, console, setup_logging, user_errors

SERVE_LIMITS = Limits()

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Hugging Face checkpoints to GGUF, quantize, run and serve them.")

VERBOSE = typer.Option(False, "--verbose", "-v", help="Show debug output and tracebacks.")
# the commands that load a model for inference (run, serve)
MMAP = typer.Option(True, "--mmap/--no-mmap", help="Map the model file (default); --no-mmap: read the weights into "
                    "memory of their own (as much as the file, private to the process), in huge pages where the "
                    "kernel gives them: fewer TLB misses as generation streams the weights.")
FTYPE_NAMES = {0: "f32", 1: "f16"}
# the options of the commands that evaluate a text in chunks (perplexity, imatrix)
CHUNK_BATCH = typer.Option(2048, "-b", "--batch-size", help="Tokens evaluated per batch (at most -c).")
THREADS = typer.Option(None, "-t", "--threads", help="Threads (default: all cores).")
CHUNK_CACHE = typer.Option("f16", "-ctk", "--cache-type-k", "--cache-type",
                           help="KV cache type (keys and values): f32, f16, q8_0, q4_0.")
REPORT_CTX, REPORT_CHUNKS = 512, 4   # quantize --report: quick by default, 4 chunks of 512 tokens per model
# the options of the commands that can write a split model (convert, quantize, split), as llama-gguf-split's
SPLIT_MAX_SIZE = typer.Option(None, "--split-max-size", metavar="N(M|G)", help="Split the output in files of at most "
                              "N megabytes (M) or gigabytes (G) of tensors each: PREFIX-00001-of-0000N.gguf, PREFIX "
                              "the output path without .gguf.")
SPLIT_MAX_TENSORS = typer.Option(None, "--split-max-tensors", help="Split the output in files of at most this many "
                                 "tensors each (named as with --split-max-size).")


def _version(value: bool) -> None:
    if value:
        from toolkit import __version__
        typer.echo(f"toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Convert Hugging Face checkpoints to GGUF, quantize, run and serve them."""


def at_least(*checks: tuple[str, int | None, int]) -> None:
    """(flag, value, lowest): a value below its lowest is a one-line error naming the flag (None: not given)."""
    from common.errors import UserError
    for name, value, low in checks:
        if value is not None and value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")


@app.command(no_args_is_help=True)
def convert(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder (config.json, weights, tokenizer)."),
    ftype: Optional[int] = typer.Argument(None, help="0 = f32, 1 = f16 (as the original convert script), or a "
                                          "llama.cpp file type id (2 = Q4_0, 7 = Q8_0, 15 = Q4_K_M, ...)."),
    outtype: Optional[str] = typer.Option(None, "--outtype", help="Output type: f32, f16, bf16 (default f16), or a "
                                          "quantization type (q8_0, q4_k_m, iq4_xs, ...: quantized in one step)."),
    outfile: Optional[str] = typer.Option(None, "--outfile", help="Output path, '-' for standard output "
                                          "(default: ggml-model-<type>.gguf in the model folder)."),
    vocab_only: bool = typer.Option(False, "--vocab-only", help="Write only the metadata and the tokenizer."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="general.name (default: the folder name)."),
    tokenizer_pre: Optional[str] = typer.Option(None, "--tokenizer-pre", help="tokenizer.ggml.pre of a BPE tokenizer "
                                                "(default: detected from the tokenizer as llama.cpp's converter does)."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Importance matrix for a quantized --outtype."),
    split_max_size: Optional[str] = SPLIT_MAX_SIZE,
    split_max_tensors: Optional[int] = SPLIT_MAX_TENSORS,
    verbose: bool = VERBOSE,
) -> None:
    """Convert a Hugging Face checkpoint to a GGUF file, streaming tensor by tensor: f32/f16/bf16, or quantized in
    one step (the bytes `convert --outtype f32` then `quantize` would give, with no intermediate file)."""
    from converter.convert import OUTTYPES, convert_model

    setup_logging(verbose)
    with user_errors(verbose):
        from common.errors import UserError
        from common.ggufsplit import split_options
        from quantizer.types import parse_file_type
        split = split_options(split_max_size, split_max_tensors)
        if outtype is not None and outtype.lower() not in OUTTYPES or ftype is not None and ftype not in FTYPE_NAMES:
            ft = parse_file_type(outtype if outtype is not None else str(ftype))
            if outtype is not None and ftype is not None and parse_file_type(str(ftype)) != ft:
                raise UserError(f"ftype {ftype} contradicts --outtype {outtype}")
            if vocab_only:
                raise UserError("--vocab-only writes no weights: it takes no quantization type")
            _convert_quantized(model_dir, ft, outfile, model_name, tokenizer_pre, imatrix, split)
            return
        if imatrix is not None:
            raise UserError("--imatrix needs a quantized --outtype")
        chosen = outtype.lower() if outtype else FTYPE_NAMES.get(ftype, "f16")
        if outtype and ftype is not None and FTYPE_NAMES[ftype] != chosen:
            raise UserError(f"ftype {ftype} ({FTYPE_NAMES[ftype]}) contradicts --outtype {outtype}")
        result = convert_model(model_dir, outtype=chosen, outfile=outfile, vocab_only=vocab_only,
                               model_name=model_name, tokenizer_pre=tokenizer_pre, split=split,
                               progress=TensorProgress("converting"),
                               info=lambda m: console.print(m, markup=False, soft_wrap=True))
        rate = result.n_bytes / 2**20 / result.seconds if result.seconds > 0 else 0.0
        console.print(f"wrote {result.path}: {result.arch}, {result.n_tensors} tensors, "
                      f"{result.n_bytes / 2**20:.1f} MiB {result.outtype} in {result.seconds:.2f} s "
                      f"({rate:.0f} MiB/s)", markup=False, soft_wrap=True)


def _convert_quantized(folder: Path, ft, outfile: str | None, model_name: str | None, tokenizer_pre: str | None,
                       imatrix: Path | None, split) -> None:
    """convert --outtype <quantization type>: the checkpoint seen as its f32 GGUF, quantized as `quantize` does."""
    from converter.convert import CheckpointTensors
    from quantizer.quantize import quantize_tensors

    matrix = _importance_matrix(imatrix, [], [])
    say = lambda text: console.print(text, markup=False, soft_wrap=True)  # noqa: E731
    with CheckpointTensors(folder, model_name, tokenizer_pre) as src:
        dest = outfile if outfile is not None else Path(folder) / f"ggml-model-{ft.name}.gguf"
        src.check_destination(dest)
        result = quantize_tensors(src, dest, ft, imatrix=matrix, progress=TensorProgress("converting"), info=say,
                                  warn=lambda m: say(f"warning: {m}"), report=lambda r: _print_quantize_summary(r, False),
                                  split=split)
    say(f"wrote {result.path}")


@app.command(no_args_is_help=False)
def quantize(
    args: Optional[list[str]] = typer.Argument(None, metavar="IN [OUT] TYPE [NTHREADS]",
                                               help="Input GGUF, optional output path, type name or id, threads."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Allow requantizing quantized tensors."),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="Leave output.weight unquantized."),
    pure: bool = typer.Option(False, "--pure", help="No k-quant mixture: every quantizable tensor gets TYPE."),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", help="Type for output.weight."),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type",
                                                       help="Type for token_embd.weight."),
    tensor_type: Optional[list[str]] = typer.Option(None, "--tensor-type", help="PATTERN=TYPE: tensors whose name "
                                                    "matches the regular expression get TYPE (repeatable)."),
    tensor_type_file: Optional[Path] = typer.Option(None, "--tensor-type-file",
                                                    help="A file of PATTERN=TYPE items (separated by white space)."),
    prune_layers: Optional[str] = typer.Option(None, "--prune-layers", help="L0,L1,...: leave these layers out "
                                               "(the later ones renumbered)."),
    override_kv: Optional[list[str]] = typer.Option(None, "--override-kv", help="KEY=TYPE:VALUE (int, float, bool, "
                                                    "str): set this metadata key in the output (repeatable)."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Importance matrix (llama-imatrix's GGUF or .dat)."),
    include_weights: Optional[list[str]] = typer.Option(None, "--include-weights",
                                                        help="Use the matrix only for tensors whose name has this."),
    exclude_weights: Optional[list[str]] = typer.Option(None, "--exclude-weights",
                                                        help="Do not use the matrix for tensors whose name has this."),
    keep_split: bool = typer.Option(False, "--keep-split", help="A split input gives a split output with the same "
                                    "tensors in each file (as llama-quantize --keep-split)."),
    split_max_size: Optional[str] = SPLIT_MAX_SIZE,
    split_max_tensors: Optional[int] = SPLIT_MAX_TENSORS,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the per-tensor types and sizes; write nothing."),
    list_types: bool = typer.Option(False, "--list", help="List the quantization types."),
    report: bool = typer.Option(False, "--report", help="Then print the output's quality against the input over "
                                "--report-file: perplexity of both, KL divergence, Δp, same top token (as "
                                "toolkit perplexity --kl-divergence)."),
    report_file: Optional[Path] = typer.Option(None, "--report-file", help="The text --report scores (required: "
                                               "no text is built in)."),
    report_ctx: int = typer.Option(REPORT_CTX, "--report-ctx", help="--report: tokens per chunk."),
    report_chunks: int = typer.Option(REPORT_CHUNKS, "--report-chunks", help="--report: at most this many chunks "
                                      "(-1 = the whole text)."),
    verbose: bool = VERBOSE,
) -> None:
    """Quantize a GGUF file, like llama-quantize: toolkit quantize IN [OUT] TYPE [NTHREADS] (IN may be a split
    model's first file)."""
    from common.ggufsplit import split_options
    from quantizer import types
    from quantizer.policy import Options
    from quantizer.quantize import parse_kv_override, quantize_file

    setup_logging(verbose)
    with user_errors(verbose):
        if list_types:
            _print_types()
            return
        inp, out, ft, nthreads = _quantize_positionals(args or [])
        plan = _report_plan(inp, report, report_file, report_ctx, report_chunks, dry_run)
        matrix = _importance_matrix(imatrix, include_weights or [], exclude_weights or [])
        opts = Options(leave_output_tensor, pure,
                       types.parse_tensor_type(output_tensor_type) if output_tensor_type else None,
                       types.parse_tensor_type(token_embedding_type) if token_embedding_type else None,
                       _tensor_types(tensor_type or [], tensor_type_file))
        overrides = [parse_kv_override(item) for item in override_kv or []]
        split = split_options(split_max_size, split_max_tensors)
        result = quantize_file(inp, out, ft, nthreads=nthreads, allow_requantize=allow_requantize, opts=opts,
                               dry_run=dry_run, imatrix=matrix, kv_overrides=overrides,
                               prune_layers=_layer_list(prune_layers) if prune_layers is not None else None,
                               progress=TensorProgress("quantizing"),
                               info=lambda m: console.print(m, markup=False, soft_wrap=True),
                               warn=lambda m: console.print(f"warning: {m}", markup=False, soft_wrap=True),
                               report=lambda r: _print_quantize_summary(r, dry_run), split=split,
                               keep_split=keep_split)
        if not dry_run:
            console.print(f"wrote {result.path}", markup=False, soft_wrap=True)
        if plan is not None:
            from toolkit import ppl
            ppl.quality_report(inp, result.path, plan, CHUNK_BATCH.default, nthreads, CHUNK_CACHE.default)


def _report_plan(inp: Path, report: bool, text: Path | None, n_ctx: int, max_chunks: int, dry_run: bool):
    """quantize --report's text, tokenized and cut into chunks before quantizing (None: no report asked)."""
    from common.errors import UserError
    from toolkit import ppl

    if not report:
        if text is not None:
            raise UserError("--report-file is read only with --report")
        return None
    if dry_run:
        raise UserError("--report scores the written file: not with --dry-run")
    if text is None:
        raise UserError("--report needs the text to score: --report-file FILE (no text is built in; a few thousand "
                        "tokens of plain text, e.g. a wiki.test.raw excerpt)")
    at_least(("--report-ctx", n_ctx, 1))
    return ppl.report_plan(inp, text, n_ctx, max_chunks)


def _layer_list(text: str) -> list[int]:
    """--prune-layers L0,L1,...: layer numbers (0 or more)."""
    from common.errors import UserError

    items = text.split(",")
    if not all(item.strip().isdigit() for item in items):
        raise UserError(f"--prune-layers {text!r}: expected comma-separated layer numbers")
    return sorted({int(item) for item in items})


def _tensor_types(items: list[str], path: Path | None):
    """--tensor-type items, then --tensor-type-file's, as llama-quantize reads them (in order, first match wins)."""
    from common.errors import UserError
    from common.textfile import read_text
    from quantizer import types

    if path is not None:
        if not path.is_file():
            raise UserError(f"--tensor-type-file {path} does not exist")
        items = items + read_text(path, "--tensor-type-file").split()
    return [types.parse_tensor_type_option(item) for item in items]


def _importance_matrix(path: Path | None, include: list[str], exclude: list[str]):
    """The matrix --imatrix names, filtered by --include-weights/--exclude-weights, with llama-quantize's lines."""
    from common.errors import UserError
    from quantizer import imatrix

    if path is None:
        if include or exclude:
            raise UserError("--include-weights/--exclude-weights need --imatrix")
        return None
    if include and exclude:
        raise UserError("--include-weights and --exclude-weights cannot be used together")
    m = imatrix.load(path)
    say = lambda text: console.print(text, markup=False, soft_wrap=True)  # noqa: E731
    if m.datasets:
        say("imatrix datasets=[" + ", ".join(f"'{d}'" for d in m.datasets) + "]")
    say(f"loaded {len(m.weights)} importance matrix entries from {path} computed on {m.chunk_count} chunks")
    m = imatrix.select(m, include, exclude)
    if m.weights:
        say(f"have {len(m.weights)} importance matrix entries")
    return m


def _quantize_positionals(args: list[str]):
    from quantizer import types
    from common.errors import UserError

    if len(args) < 2:
        raise UserError("usage: toolkit quantize IN [OUT] TYPE [NTHREADS] (toolkit quantize --list for the types)")
    inp = Path(args[0])
    rest = args[1:]
    out = None
    try:  # llama-quantize: when the second positional is a type, the output is named after it
        ft = types.parse_file_type(rest[0])
        rest = rest[1:]
    except UserError:
        if len(rest) < 2:
            raise
        out, ft, rest = Path(rest[0]), types.parse_file_type(rest[1]), rest[2:]
    nthreads = None
    if rest:
        if len(rest) > 1 or not rest[0].isdigit() or int(rest[0]) < 1:
            raise UserError(f"NTHREADS must be a positive integer, got {' '.join(rest)!r}")
        nthreads = int(rest[0])
    return inp, out, ft, nthreads


def _print_types() -> None:
    from rich.table import Table

    from quantizer import types

    t = Table("name", "id", "bits/weight", "description", title="quantization types")
    for f in types.FILE_TYPES:
        t.add_row(f.name, str(int(f.ftype)), f"{f.bpw:g}", f.description)
    for alias, name in types.ALIASES.items():
        t.add_row(alias, "", "", f"alias for {name}")
    Console().print(t)


def _print_quantize_summary(r, dry_run: bool) -> None:
    """Printed before the output is renamed into place (quantize_file's `report`)."""
    from rich.table import Table

    if dry_run:
        t = Table("tensor", "shape", "type", "→", "MiB", title=f"dry run: {r.ftype}")
        for c in r.choices:
            t.add_row(c.name, str(list(reversed(c.shape))), c.src_type.name, c.dst_type.name, "")
        Console().print(t)
    console.print(f"model size  = {r.size_in / 2**20:10.2f} MiB ({r.bpw_in:.2f} BPW)", markup=False)
    console.print(f"quant size  = {r.size_out / 2**20:10.2f} MiB ({r.bpw_out:.2f} BPW)", markup=False)
    if r.n_fallback:
        console.print(f"WARNING: {r.n_fallback} of {len(r.choices)} tensor(s) required fallback quantization",
                      markup=False)
    if not dry_run:
        console.print(f"quantize time = {r.seconds * 1000:10.2f} ms", markup=False)


@app.command(no_args_is_help=True, context_settings={"ignore_unknown_options": False})
def run(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file."),
    prompt: str = typer.Option("", "-p", "--prompt", help="Prompt (the system prompt in chat mode)."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Read the prompt from a file."),
    n_predict: int = typer.Option(-1, "-n", "--n-predict", help="Tokens to generate (-1 = until end or full context)."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", help="Context size in tokens (0: the model's training "
                                 "context, lowered to fit half of the memory available)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    batch_size: int = typer.Option(512, "-b", "--batch-size", help="Prompt tokens evaluated per batch."),
    cache_type: str = typer.Option("f16", "-ctk", "--cache-type-k", "--cache-type",
                                   help="KV cache type of the keys: f32, f16, q8_0, q4_0."),
    cache_type_v: Optional[str] = typer.Option(None, "-ctv", "--cache-type-v",
                                               help="KV cache type of the values (default: the keys')."),
    context_shift: bool = typer.Option(False, "--context-shift/--no-context-shift",
                                       help="When the context fills while generating, drop the older half of what "
                                       "follows the kept tokens and go on (else stop)."),
    keep: int = typer.Option(0, "--keep", help="Tokens kept at the start of the context when it shifts (after the "
                             "BOS; -1: the whole prompt)."),
    seed: int = typer.Option(-1, "-s", "--seed", help="Random seed (-1 = random)."),
    temp: float = typer.Option(0.8, "--temp", help="Temperature; 0 = greedy."),
    top_k: int = typer.Option(40, "--top-k", help="Top-k sampling (0 = off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Top-p sampling (1.0 = off)."),
    min_p: float = typer.Option(0.05, "--min-p", help="Min-p sampling (0.0 = off)."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", help="Repetition penalty (1.0 = off)."),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", help="Tokens considered by the penalty (-1 = context)."),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty", help="Presence penalty (0.0 = off)."),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", help="Frequency penalty (0.0 = off)."),
    logit_bias: Optional[list[str]] = typer.Option(None, "--logit-bias", "-l",
                                                   help="TOKEN_ID(+/-)BIAS, e.g. 15043+1 or 15043-inf (repeatable)."),
    typical: float = typer.Option(1.0, "--typical", "--typical-p", help="Locally typical sampling (1.0 = off)."),
    top_nsigma: float = typer.Option(-1.0, "--top-nsigma", "--top-n-sigma", help="Top-n-sigma (-1 = off)."),
    xtc_probability: float = typer.Option(0.0, "--xtc-probability", help="XTC chance (0.0 = off)."),
    xtc_threshold: float = typer.Option(0.1, "--xtc-threshold", help="XTC threshold (> 0.5 = off)."),
    dry_multiplier: float = typer.Option(0.0, "--dry-multiplier", help="DRY multiplier (0.0 = off)."),
    dry_base: float = typer.Option(1.75, "--dry-base", help="DRY base (>= 1)."),
    dry_allowed_length: int = typer.Option(2, "--dry-allowed-length", help="DRY: repeats longer are penalized."),
    dry_penalty_last_n: int = typer.Option(64, "--dry-penalty-last-n", help="DRY: tokens scanned (0 = off)."),
    dry_sequence_breaker: Optional[list[str]] = typer.Option(
        None, "--dry-sequence-breaker", help="DRY sequence breaker, replacing the defaults ('\\n', ':', '\"', "
        "'*'); none: no breakers (repeatable)."),
    mirostat: int = typer.Option(0, "--mirostat", help="Mirostat 1 or 2 instead of the sampler sequence (0 = off)."),
    mirostat_lr: float = typer.Option(0.1, "--mirostat-lr", help="Mirostat learning rate, eta."),
    mirostat_ent: float = typer.Option(5.0, "--mirostat-ent", help="Mirostat target entropy, tau."),
    samplers: Optional[str] = typer.Option(None, "--samplers", help="The sampler sequence, names separated by ';' "
                                           "(default: penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;"
                                           "temperature)."),
    sampler_seq: Optional[str] = typer.Option(None, "--sampler-seq", "--sampling-seq",
                                              help="The sampler sequence as letters (default: edskypmxt)."),
    grammar: Optional[str] = typer.Option(None, "--grammar", help="GBNF grammar the output follows."),
    grammar_file: Optional[Path] = typer.Option(None, "--grammar-file", help="File with a GBNF grammar."),
    json_schema: Optional[str] = typer.Option(None, "-j", "--json-schema",
                                              help="JSON Schema the output follows (JSON text)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep generating past end-of-generation tokens."),
    escape: bool = typer.Option(True, "-e/--no-escape", "--escape", help="Process escapes (\\n, \\t) in the prompt."),
    color: bool = typer.Option(False, "--color", help="Colour the prompt and user input."),
    verbose_prompt: bool = typer.Option(False, "--verbose-prompt", help="Print the prompt's tokens."),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Continue the text with lines from stdin."),
    instruct: bool = typer.Option(False, "-ins", "--instruct", help="Chat mode (as -cnv)."),
    conversation: bool = typer.Option(False, "-cnv", "--conversation", help="Chat with the model's template."),
    reverse_prompt: Optional[list[str]] = typer.Option(None, "-r", "--reverse-prompt",
                                                       help="Stop and hand over to the user at this text."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template",
                                                help="codeshell, llama-2, chatml, gemma, phi3, Jinja text or file."),
    jinja: bool = typer.Option(True, "--jinja/--no-jinja", help="Chat with the model file's own Jinja template "
                               "(llama.cpp's default); --no-jinja: the architecture's built-in format."),
    chat_template_file: Optional[Path] = typer.Option(None, "--chat-template-file",
                                                      help="A Jinja chat template file (llama.cpp's flag)."),
    use_mmap: bool = MMAP,
    verbose: bool = VERBOSE,
) -> None:
    """Generate text with a GGUF model, like llama.cpp's main."""
    from runtime import sampling
    from runtime.main import RunOptions, Runner
    from common.errors import UserError

    setup_logging(verbose)
    with user_errors(verbose):
        if file is not None:
            if not file.is_file():
                raise UserError(f"prompt file {file} does not exist")
            from common.textfile import read_text
            prompt = read_text(file, "prompt file")
        at_least(("-c", ctx_size, 0), ("-b", batch_size, 1))
        if threads is not None and threads < 1:
            raise UserError(f"-t must be at least 1, got {threads}")
        for flag, field, value in (("--temp", "temp", temp), ("--top-k", "top_k", top_k), ("--top-p", "top_p", top_p),
                                   ("--min-p", "min_p", min_p), ("--repeat-penalty", "repeat_penalty", repeat_penalty),
                                   ("--repeat-last-n", "repeat_last_n", repeat_last_n),
                                   ("--presence-penalty", "presence_penalty", presence_penalty),
                                   ("--frequency-penalty", "frequency_penalty", frequency_penalty)):
            sampling.check(field, value, flag)
        constraint = run_grammar(grammar, grammar_file, json_schema)
        extra = extra_samplers({"--typical": ("typ_p", typical), "--top-nsigma": ("top_n_sigma", top_nsigma),
                                "--xtc-probability": ("xtc_probability", xtc_probability),
                                "--xtc-threshold": ("xtc_threshold", xtc_threshold),
                                "--dry-multiplier": ("dry_multiplier", dry_multiplier),
                                "--dry-base": ("dry_base", dry_base),
                                "--dry-allowed-length": ("dry_allowed_length", dry_allowed_length),
                                "--dry-penalty-last-n": ("dry_penalty_last_n", dry_penalty_last_n),
                                "--mirostat": ("mirostat", mirostat), "--mirostat-lr": ("mirostat_eta", mirostat_lr),
                                "--mirostat-ent": ("mirostat_tau", mirostat_ent)},
                               dry_sequence_breaker, samplers, sampler_seq)
        params = sampling.SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed,
                                         presence_penalty, frequency_penalty, parse_logit_biases(logit_bias or []),
                                         **extra)
        opts = RunOptions(model=str(model), prompt=prompt, n_predict=n_predict, n_ctx=ctx_size, n_batch=batch_size,
                          n_threads=threads, cache_type=cache_type, cache_type_v=cache_type_v, verbose=verbose,
                          sampling=params, context_shift=context_shift, n_keep=keep,
                          ignore_eos=ignore_eos, escape=escape, color=color, verbose_prompt=verbose_prompt,
                          interactive=interactive, chat=instruct or conversation,
                          reverse_prompts=list(reverse_prompt or []), jinja=jinja,
                          chat_template=template_option(chat_template, chat_template_file),
                          grammar=constraint, use_mmap=use_mmap)
        runner = Runner(opts)
        try:
            runner.run()
        finally:
            runner.close()


def run_grammar(grammar: str | None, grammar_file: Path | None, json_schema: str | None):
    """The one grammar --grammar, --grammar-file or -j gives (None: free text)."""
    from runtime.grammar import load_grammar
    from runtime.structured import one_constraint
    from common.errors import UserError

    given = [flag for flag, v in (("--grammar", grammar), ("--grammar-file", grammar_file), ("-j", json_schema))
             if v is not None]
    if len(given) > 1:
        raise UserError(f"give one of {' / '.join(given)}, not several")
    if grammar_file is not None:
        return load_grammar(path=str(grammar_file))
    return one_constraint(grammar=grammar, json_schema=json_schema)


def parse_logit_biases(values: list[str]) -> dict[int, float]:
    """llama.cpp's --logit-bias TOKEN_ID(+/-)BIAS ("15043+1", "15043-1", "15043-inf" bans)."""
    import re
    from runtime import sampling
    from common.errors import UserError

    out = {}
    for v in values:
        m = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(inf|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*", v)
        if not m:
            raise UserError(f"--logit-bias must be TOKEN_ID(+/-)BIAS, e.g. 15043+1 or 15043-inf, got {v!r}")
        token, bias = int(m.group(1)), float(m.group(2) + m.group(3))
        sampling.check_bias(token, bias, "--logit-bias")
        out[token] = bias
    return out


def template_option(chat_template: str | None, chat_template_file: Path | None) -> str | None:
    """--chat-template NAME|JINJA|FILE or llama.cpp's --chat-template-file FILE: a built-in name or a template."""
    from common.errors import UserError
    from common.textfile import read_text
    from server.main import chat_template_arg

    if chat_template_file is None:
        return chat_template_arg(chat_template)
    if chat_template:
        raise UserError("give --chat-template or --chat-template-file, not both")
    if not chat_template_file.is_file():
        raise UserError(f"--chat-template-file {chat_template_file} does not exist")
    return read_text(chat_template_file, "--chat-template-file")


def extra_samplers(flags: dict[str, tuple[str, object]], breakers: list[str] | None, names: str | None,
                   letters: str | None) -> dict:
    """llama.cpp's extra samplers' flags as SamplingParams fields, each checked under its flag: --dry-sequence-breaker
    replaces the default breakers ("none": no breakers), --samplers (names separated by ';') or --sampler-seq
    (letters) set the sequence."""
    from common.errors import UserError
    from runtime import sampling

    out = {}
    for flag, (field, value) in flags.items():
        sampling.check(field, value, flag)
        out[field] = value
    if breakers is not None:
        kept: list[str] = []
        for b in breakers:  # as llama.cpp: "none" drops the breakers given before it
            kept = [] if b == "none" else kept + [b]
        out["dry_sequence_breakers"] = tuple(kept)
    if names is not None and letters is not None:
        raise UserError("give --samplers or --sampler-seq, not both")
    if names is not None:
        out["samplers"] = sampling.samplers_from_names(names.split(";"), "--samplers")
    if letters is not None:
        out["samplers"] = sampling.samplers_from_chars(letters, "--sampler-seq")
    return out


SERVE_HELP = ("Serve a GGUF model over HTTP: OpenAI's /v1 API and llama.cpp's /completion, docs at /docs.\n\n"
              f"Limits per client: {SERVE_LIMITS.describe()} (the connection cap lowered to fit a low open-file "
              "limit; beyond it the longest idle connection is closed to make room, else 503).")


@app.command(no_args_is_help=True, help=SERVE_HELP)
def serve(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="Port (0: any free port, shown in the startup line)."),
    ctx_size: int = typer.Option(0, "-c", "--ctx-size", help="Context size in tokens, per slot (0: the model's "
                                 "training context shared by the slots, lowered to fit half of the memory available)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="Logical batch: prompt tokens per request step."),
    ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", help="Physical batch: tokens per native pass, "
                                    "all slots together."),
    cache_type: str = typer.Option("f16", "-ctk", "--cache-type-k", "--cache-type",
                                   help="KV cache type of the keys: f32, f16, q8_0, q4_0."),
    cache_type_v: Optional[str] = typer.Option(None, "-ctv", "--cache-type-v",
                                               help="KV cache type of the values (default: the keys')."),
    parallel: int = typer.Option(4, "-np", "--parallel", help="Requests generating at once (slots), their tokens "
                                 "evaluated together."),
    context_shift: bool = typer.Option(False, "--context-shift/--no-context-shift",
                                       help="When the context fills while generating, drop the older half of what "
                                       "follows the kept tokens and go on (else stop)."),
    keep: int = typer.Option(0, "--keep", help="Tokens kept at the start of the context when it shifts (after the "
                             "BOS)."),
    queue: int = typer.Option(32, "--queue", help="Requests waiting for a slot before answering 503."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require Authorization: Bearer KEY."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template",
                                                help="codeshell, llama-2, chatml, gemma, phi3, Jinja text or file."),
    jinja: bool = typer.Option(True, "--jinja/--no-jinja", help="Chat with the model file's own Jinja template "
                               "(llama.cpp's default); --no-jinja: the architecture's built-in format."),
    chat_template_file: Optional[Path] = typer.Option(None, "--chat-template-file",
                                                      help="A Jinja chat template file (llama.cpp's flag)."),
    reasoning_format: str = typer.Option("deepseek", "--reasoning-format", help="A chat answer's thought "
                                         "(<think>...</think>): none (left in content), deepseek, deepseek-legacy, "
                                         "auto (in message.reasoning_content, as llama-server)."),
    reasoning: str = typer.Option("auto", "-rea", "--reasoning", help="Thinking in the chat: on, off (the template's "
                                  "enable_thinking) or auto (on when the template has thinking tags)."),
    chat_template_kwargs: Optional[str] = typer.Option(None, "--chat-template-kwargs", help="Extra variables for "
                                                       "the chat template, a JSON object, e.g. "
                                                       "'{\"enable_thinking\": false}'."),
    alias: Optional[str] = typer.Option(None, "-a", "--alias", help="Model name in the API (default: file name)."),
    strict_model: bool = typer.Option(False, "--strict-model", help="Answer 404 to requests naming another model."),
    seed: int = typer.Option(-1, "-s", "--seed", help="Seed for requests that give none (-1 = random)."),
    timeout: float = typer.Option(SERVE_LIMITS.timeout, "-to", "--timeout",
                                  help="Seconds a client has to send a request's head, and again its body (else 408)."),
    metrics: bool = typer.Option(False, "--metrics", help="Serve GET /metrics (Prometheus text, llama-server's names)."),
    slots: bool = typer.Option(True, "--slots/--no-slots", help="Serve GET /slots (each slot's state)."),
    embedding: bool = typer.Option(False, "--embedding", "--embeddings", help="Serve /v1/embeddings (else it "
                                   "answers 501, as llama-server)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="Embeddings' pooling: none, mean, cls, last "
                                          "(default: the model's pooling_type, else none)."),
    embd_normalize: int = typer.Option(2, "--embd-normalize", help="Embeddings' normalization: -1 none, 0 max "
                                       "absolute (int16 range), 1 taxicab, 2 Euclidean, p > 2 p-norm."),
    use_mmap: bool = MMAP,
    verbose: bool = VERBOSE,
) -> None:
    from server import ServeOptions
    from server import serve as run_server

    setup_logging(verbose)
    with user_errors(verbose):
        run_server(ServeOptions(model=str(model), host=host, port=port, n_ctx=ctx_size, n_threads=threads,
                                n_batch=batch_size, n_ubatch=ubatch_size, cache_type=cache_type,
                                cache_type_v=cache_type_v, use_mmap=use_mmap, parallel=parallel, queue=queue,
                                api_key=api_key,
                                context_shift=context_shift, n_keep=keep,
                                chat_template=template_option(chat_template, chat_template_file), jinja=jinja,
                                reasoning_format=reasoning_format, reasoning=reasoning,
                                chat_template_kwargs=chat_template_kwargs, alias=alias, strict_model=strict_model,
                                seed=seed,
                                timeout=timeout, metrics=metrics, slots=slots, embedding=embedding, pooling=pooling,
                                embd_normalize=embd_normalize))


@app.command(no_args_is_help=True)
def imatrix(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file (F32, F16 or BF16 ideally)."),
    file: Path = typer.Option(..., "-f", "--file", help="Calibration text."),
    output: Path = typer.Option(Path("imatrix.gguf"), "-o", "--output-file", "--output",
                                help="Importance matrix file (llama-imatrix's GGUF layout)."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", help="Tokens per chunk."),
    batch_size: int = CHUNK_BATCH,
    threads: Optional[int] = THREADS,
    chunks: int = typer.Option(-1, "--chunks", help="Use at most this many chunks (-1 = all)."),
    cache_type: str = CHUNK_CACHE,
    verbose: bool = VERBOSE,
) -> None:
    """Importance matrix of a model over a calibration text, as llama-imatrix computes it (for quantize --imatrix)."""
    from toolkit import ppl

    setup_logging(verbose)
    with user_errors(verbose):
        at_least(("-c", ctx_size, 1), ("-b", batch_size, 1), ("-t", threads, 1))
        ppl.imatrix(model, file, output, ctx_size, batch_size, threads, chunks, cache_type)


@app.command(no_args_is_help=True)
def perplexity(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Text to score (not used with --kl-divergence)."),
    ctx_size: Optional[int] = typer.Option(None, "-c", "--ctx-size", help="Tokens per chunk (default 512; with "
                                           "--kl-divergence, the base file's)."),
    batch_size: int = CHUNK_BATCH,
    threads: Optional[int] = THREADS,
    chunks: int = typer.Option(-1, "--chunks", help="Score at most this many chunks (-1 = all)."),
    kl_divergence_base: Optional[Path] = typer.Option(None, "--kl-divergence-base", "--save-all-logits",
                                                      help="Base log-probabilities file: written (llama-perplexity's "
                                                      "format), or read with --kl-divergence."),
    kl_divergence: bool = typer.Option(False, "--kl-divergence", help="Compare this model with the one that wrote "
                                       "--kl-divergence-base, over its tokens: KLD, Δp, same top token."),
    cache_type: str = CHUNK_CACHE,
    verbose: bool = VERBOSE,
) -> None:
    """Perplexity of a model over a text, and KL divergence from a base model, as llama-perplexity computes them."""
    from common.errors import UserError
    from toolkit import ppl

    setup_logging(verbose)
    with user_errors(verbose):
        at_least(("-c", ctx_size, 1), ("-b", batch_size, 1), ("-t", threads, 1))
        if kl_divergence:
            if kl_divergence_base is None:
                raise UserError("--kl-divergence needs --kl-divergence-base FILE (written by a run without "
                                "--kl-divergence)")
            if file is not None:
                console.print(f"note: {file} is not read: the tokens come from {kl_divergence_base}", markup=False)
            ppl.kl_divergence(model, kl_divergence_base, ctx_size, batch_size, threads, chunks, cache_type)
            return
        if file is None:
            raise UserError("give the text to score with -f FILE")
        ppl.perplexity(model, file, ctx_size or 512, batch_size, threads, chunks, cache_type, kl_divergence_base)


@app.command(no_args_is_help=True)
def split(
    inp: Path = typer.Argument(..., metavar="GGUF_IN", help="Model file (--split), or a split model's first file."),
    out: str = typer.Argument(..., metavar="GGUF_OUT", help="--split: the split files' PREFIX (a .gguf ending is "
                              "dropped); --merge: the merged file."),
    do_split: bool = typer.Option(False, "--split", help="Split GGUF_IN into several files (the default)."),
    merge: bool = typer.Option(False, "--merge", help="Merge a split model back into one file: the bytes of the file "
                               "it was split from."),
    split_max_size: Optional[str] = SPLIT_MAX_SIZE,
    split_max_tensors: Optional[int] = typer.Option(None, "--split-max-tensors", help="Split the output in files of "
                                                    "at most this many tensors each (default: 128)."),
    no_tensor_first_split: bool = typer.Option(False, "--no-tensor-first-split", help="Put only the metadata in the "
                                               "first file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the split plan; write nothing."),
    verbose: bool = VERBOSE,
) -> None:
    """Split a GGUF model into files PREFIX-00001-of-0000N.gguf that llama.cpp loads given the first, or merge them
    back, like llama-gguf-split."""
    from common.errors import UserError
    from common.ggufsplit import merge_model, split_model, split_options

    setup_logging(verbose)
    with user_errors(verbose):
        say = lambda text: console.print(text, markup=False, soft_wrap=True)  # noqa: E731
        if do_split and merge:
            raise UserError("either --split or --merge can be given, not both")
        if merge:
            if split_max_size is not None or split_max_tensors is not None or no_tensor_first_split:
                raise UserError("--merge takes no --split-max-size, --split-max-tensors or --no-tensor-first-split")
            path = merge_model(inp, out, dry_run=dry_run, progress=TensorProgress("merging"), info=say)
            if not dry_run:
                say(f"wrote {path}")
            return
        if split_max_size is None and split_max_tensors is None:
            split_max_tensors = 128
        opts = split_options(split_max_size, split_max_tensors, no_tensor_first_split)
        paths = split_model(inp, out, opts, dry_run=dry_run, progress=TensorProgress("splitting"), info=say)
        if not dry_run:
            say(f"wrote {paths[0]} ... {paths[-1].name}" if len(paths) > 1 else f"wrote {paths[0]}")


@app.command(no_args_is_help=True)
def info(path: Path = typer.Argument(..., help="GGUF file (a split model: its first file)."),
         verbose: bool = VERBOSE) -> None:
    """Summarise a GGUF file: metadata, tensor types and sizes."""
    from toolkit.inspect import summary

    with user_errors(verbose):
        meta, types, line = summary(path)
        out = Console()
        out.print(meta)
        out.print(types)
        out.print(line, markup=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
