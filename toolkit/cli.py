"""`toolkit` command line: one small function per subcommand that parses flags and calls the library."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from toolkit.ui import TensorProgress, console, setup_logging, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Hugging Face checkpoints to GGUF, quantize, run and serve them.")

VERBOSE = typer.Option(False, "--verbose", "-v", help="Show debug output and tracebacks.")
FTYPE_NAMES = {0: "f32", 1: "f16"}


def _version(value: bool) -> None:
    if value:
        from toolkit import __version__
        typer.echo(f"toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Convert Hugging Face checkpoints to GGUF, quantize, run and serve them."""


@app.command(no_args_is_help=True)
def convert(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder (config.json, weights, tokenizer)."),
    ftype: Optional[int] = typer.Argument(None, help="0 = f32, 1 = f16 (as the original convert script)."),
    outtype: Optional[str] = typer.Option(None, "--outtype", help="Output type: f32, f16 or bf16 (default f16)."),
    outfile: Optional[str] = typer.Option(None, "--outfile", help="Output path, '-' for standard output "
                                          "(default: ggml-model-<type>.gguf in the model folder)."),
    vocab_only: bool = typer.Option(False, "--vocab-only", help="Write only the metadata and the tokenizer."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="general.name (default: the folder name)."),
    verbose: bool = VERBOSE,
) -> None:
    """Convert a Hugging Face checkpoint to an f32/f16/bf16 GGUF file, streaming tensor by tensor."""
    from converter.convert import convert_model

    setup_logging(verbose)
    with user_errors(verbose):
        from toolkit.errors import UserError
        if ftype is not None and ftype not in FTYPE_NAMES:
            raise UserError(f"ftype must be 0 (f32) or 1 (f16), got {ftype}")
        chosen = outtype.lower() if outtype else FTYPE_NAMES.get(ftype, "f16")
        if outtype and ftype is not None and FTYPE_NAMES[ftype] != chosen:
            raise UserError(f"ftype {ftype} ({FTYPE_NAMES[ftype]}) contradicts --outtype {outtype}")
        result = convert_model(model_dir, outtype=chosen, outfile=outfile, vocab_only=vocab_only,
                               model_name=model_name, progress=TensorProgress("converting"),
                               info=lambda m: console.print(m, markup=False, soft_wrap=True))
        rate = result.n_bytes / 2**20 / result.seconds if result.seconds > 0 else 0.0
        console.print(f"wrote {result.path}: {result.arch}, {result.n_tensors} tensors, "
                      f"{result.n_bytes / 2**20:.1f} MiB {result.outtype} in {result.seconds:.2f} s "
                      f"({rate:.0f} MiB/s)", markup=False, soft_wrap=True)


@app.command(no_args_is_help=True)
def info(path: Path = typer.Argument(..., help="GGUF file."), verbose: bool = VERBOSE) -> None:
    """Summarise a GGUF file: metadata, tensor types and sizes."""
    from toolkit.inspect import summary

    with user_errors(verbose):
        meta, types, line = summary(path)
        out = Console()
        out.print(meta)
        out.print(types)
        out.print(line)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
