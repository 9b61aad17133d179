"""Measurement helpers: wall time and peak RSS of a child process, medians, the ratio table."""
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


# A child's ru_maxrss includes its parent's resident set at the fork, so the command is forked from a small launcher
# process, which reports the wall time and the peak RSS of the command alone.
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:  # the command's own stdout must not mix with the result line
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], env: dict | None = None) -> Run:
    """Run a command to completion; its wall time and the peak RSS of that process alone."""
    p = subprocess.run([PY, "-c", _LAUNCHER, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env={**os.environ, **(env or {})}, text=True)
    last = p.stdout.strip().splitlines()[-1].split() if p.stdout.strip() else ["0", "0", "1"]
    seconds, maxrss_kb, code = float(last[0]), int(last[1]), int(last[2])
    if p.returncode != 0 or code != 0:
        raise RuntimeError(f"command failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return Run(seconds, maxrss_kb / 1024)


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


def llama_bench(bin_dir: Path, path: Path, n_prompt: int, n_gen: int, threads: int = 2) -> tuple[float, float]:
    """llama-bench's prompt tokens/s (n_prompt tokens at depth 0) and generation tokens/s (n_gen tokens after a
    prompt of n_prompt, as ours are measured), one repetition each after its warm-up."""
    def tps(*args: str) -> float:
        p = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(path), "-t", str(threads), "-r", "1", "-o", "json",
                            *args], check=True, capture_output=True, text=True)
        return float(json.loads(p.stdout)[0]["avg_ts"])
    return tps("-p", str(n_prompt), "-n", "0"), tps("-p", "0", "-n", str(n_gen), "-d", str(n_prompt))


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    t = Table(*columns, title=title, title_justify="left")
    for r in rows:
        t.add_row(*r)
    console.print(t)
