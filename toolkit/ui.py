"""Terminal output shared by the subcommands: a stderr console, progress (rich bar on a terminal, plain lines
otherwise), and the one-line error handling."""
from __future__ import annotations

import logging
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from common.errors import UserError

console = Console(stderr=True, highlight=False)


def setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("toolkit")
    logger.handlers[:] = [RichHandler(console=console, show_time=False, show_path=False, markup=False)]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


@contextmanager
def user_errors(verbose: bool) -> Iterator[None]:
    """Turn expected failures into one line on stderr and a non-zero exit (a traceback only with --verbose)."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        raise typer.Exit(130)
    except (UserError, OSError, MemoryError) as e:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        msg = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        console.print(f"[red]error:[/red] {msg}", markup=True, soft_wrap=True)
        raise typer.Exit(1)
    except Exception as e:  # a bug: still one line unless asked, but say that it is one
        if verbose:
            traceback.print_exc(file=sys.stderr)
        console.print(f"[red]internal error:[/red] {type(e).__name__}: {e} (run with --verbose for the traceback)",
                      soft_wrap=True)
        raise typer.Exit(2)


def _mib(n: int) -> str:
    return f"{n / 2**20:8.2f} MiB"


class TensorProgress:
    """Progress over a list of tensors: a rich bar (tensors, bytes, throughput, ETA) on a terminal, one plain line per
    tensor otherwise."""

    def __init__(self, description: str):
        self.description = description
        self.rich = console.is_terminal
        self._bar: Progress | None = None
        self._task = None
        self._done = 0
        self._total = 0

    def start(self, total_items: int, total_bytes: int) -> None:
        self._total = total_items
        if self.rich:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[items]}"), DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=console)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total_bytes, items=f"0/{total_items}")

    def advance(self, name: str, info, detail: str | None = None) -> None:
        """One tensor done; `detail` replaces the default plain-text line."""
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=info.nbytes, items=f"{self._done}/{self._total}")
        elif detail is not None:
            print(detail, file=sys.stderr, flush=True)
        else:
            width = len(str(self._total))
            shape = "[" + ", ".join(str(d) for d in reversed(info.shape)) + "]"
            print(f"[{self._done:{width}d}/{self._total}] {name:<36} {info.ggml_type.name.lower():>5} "
                  f"{shape:<16} {_mib(info.nbytes)}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class ChunkProgress:
    """Progress over chunks of a text (perplexity, KL divergence): a rich bar with a note (the running estimate) on a
    terminal, nothing otherwise (the caller prints its own lines)."""

    def __init__(self, description: str, total: int):
        self.live = console.is_terminal
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console,
                                 redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, note="")

    def advance(self, note: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, note=note)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
