"""Measurement helpers: wall time, peak RSS and stdout of a child process alone, medians, llama-bench's figures, the ratio
table."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=160)
PY = sys.executable
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    stdout: str = ""


class CommandFailed(subprocess.CalledProcessError):
    """A measured command that failed (stdout and stderr as bytes, as subprocess gives them); the message ends with
    the tail of its stderr."""
    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or b'').decode(errors='replace')[-2000:]}"


# A child's ru_maxrss includes its parent's resident set at the fork (or, forked with vfork as subprocess does, the
# parent's peak), so the command is forked from a small launcher process, which reports the wall time and the peak RSS
# of the command alone on the last line of stderr, after the command has exited.
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\n{time.perf_counter() - t0} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}\\n")
"""


def measure(cmd: list[str], env: dict | None = None) -> Run:
    """Run a command to completion; its wall time, the peak RSS of that process alone and its stdout."""
    p = subprocess.run([PY, "-c", _LAUNCHER, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env={**os.environ, **(env or {})})
    lines = p.stderr.rstrip().splitlines()
    last = lines[-1].split() if lines else []
    if p.returncode != 0 or len(last) != 3:   # the launcher itself failed
        raise CommandFailed(p.returncode or 1, cmd, p.stdout, p.stderr)
    seconds, maxrss_kb, code = float(last[0]), int(last[1]), int(last[2])
    if code != 0:
        raise CommandFailed(code, cmd, p.stdout, b"\n".join(lines[:-1]))
    return Run(seconds, maxrss_kb / 1024, p.stdout.decode(errors="replace"))


def median_run(cmd: list[str], repeat: int, env: dict | None = None) -> Run:
    runs = [measure(cmd, env) for _ in range(repeat)]
    return Run(statistics.median(r.seconds for r in runs), max(r.peak_rss_mb for r in runs))


def alternating_runs(cmds: dict[str, list[str]], repeat: int, env: dict | None = None) -> dict[str, Run]:
    """Each command `repeat` times, taking turns (the order reversed every other round, so that a slow spell of the
    machine hits every side); per command the median time and the highest peak RSS."""
    runs: dict[str, list[Run]] = {name: [] for name in cmds}
    for r in range(repeat):
        for name in (list(cmds) if r % 2 == 0 else list(reversed(cmds))):
            runs[name].append(measure(cmds[name], env))
    return {name: Run(statistics.median(x.seconds for x in rs), max(x.peak_rss_mb for x in rs))
            for name, rs in runs.items()}


def drop_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def cold_cache(path: Path) -> None:
    """Drop a file's pages from the page cache (those no process maps), so that the next reader reads it from disk,
    as after a reboot: what a mapping of it then gets (2 MiB folios or 4 KiB pages) depends on that reader's request
    only, not on which program read it first or which of its pages the bench's other files pushed out before."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def llama_cpp_source(data: Path) -> Path:
    """llama.cpp's own sources as pinned by llama-cpp-python 0.3.36 (its sdist vendors them), fetched through pip
    (and pip's cache) on first use; used only to run llama.cpp's converter for comparison. Nothing is committed."""
    root = data / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    dl = data / "sdist"
    subprocess.run([PY, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_PYTHON,
                    "-d", str(dl)], check=True)
    sdist = next(dl.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/")
            if len(parts) > 3 and parts[1:3] == ["vendor", "llama.cpp"]:
                rel = "/".join(parts[3:])
                if rel == "convert_hf_to_gguf.py" or rel.startswith(("conversion/", "gguf-py/")):
                    m.name = rel
                    members.append(m)
        tar.extractall(root, members=members, filter="data")
    return root


BUILD_SCRIPT = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "build-llama-cpp.sh"


def llama_cpp_tools(data: Path) -> Path:
    """The binaries of llama.cpp b11434 built for this CPU's best SIMD level (never AMX) by
    ../shared/tools/build-llama-cpp.sh into DATA/llama.cpp, built on first use (about 11 minutes)."""
    dest = data / "llama.cpp"
    if not (dest / "bin" / "llama-bench").is_file():
        console.print(f"building llama.cpp b11434 into {dest} (about 11 minutes, once)")
        subprocess.run(["bash", str(BUILD_SCRIPT), str(dest)], check=True)
    return dest / "bin"


@dataclass
class BenchFigures:
    """llama-bench's tokens/s for each prompt length, its generation tokens/s and the highest peak RSS (MB) of its
    processes."""
    prompt: dict[int, float]
    gen: float
    peak_rss_mb: float


def llama_bench(bin_dir: Path, path: Path, n_prompts: list[int], n_gen: int, depth: int,
                threads: int = 2) -> BenchFigures:
    """llama-bench's prompt tokens/s for each of n_prompts (at depth 0, one process) and generation tokens/s (n_gen
    tokens after a prompt of `depth`, as ours are measured, a second process), one repetition each after its warm-up
    (a whole prompt, or one token); the peak RSS is the higher of the two processes' (each one's ru_maxrss: the
    weights it mapped and touched or repacked, its context and buffers)."""
    def tests(*args: str) -> tuple[list[dict], float]:
        r = measure([str(bin_dir / "llama-bench"), "-m", str(path), "-t", str(threads), "-r", "1", "-o", "json",
                     *args])
        return json.loads(r.stdout), r.peak_rss_mb
    prompts, rss_prompt = tests("-p", ",".join(map(str, n_prompts)), "-n", "0")
    gen, rss_gen = tests("-p", "0", "-n", str(n_gen), "-d", str(depth))
    return BenchFigures({int(t["n_prompt"]): float(t["avg_ts"]) for t in prompts}, float(gen[0]["avg_ts"]),
                        max(rss_prompt, rss_gen))


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:  # a narrow column folds its text: no figure or name is cut short
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    console.print(t)
