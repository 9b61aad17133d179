"""Issue 18's acceptance corpora: ≥ 1,000 structure-aware mutations of small real GGUF files through `info`, `run` and
`quantize`, and ≥ 300 mutated checkpoints through `convert` — no crash, no internal error, no traceback, no partial
output, every failure exit 1 with one `error:` line (convert: also under 1 GB of peak RSS and 10 s each).

The bulk runs in-process inside two long-lived workers (tests/mutations.py: a worker killed by a signal is reported
against the file and mutation it was running); a sample runs as real `python -m toolkit` processes to show that the
exit codes and messages are the command line's. The corpora are generated from fixed seeds: a finding is named by its
mutation id and can be replayed with `mutation_job`. The findings this corpus made are regression cases below."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from converter.convert import convert_model
from fixtures import make_checkpoint
from tests import mutations as M
from tests.helpers import run_toolkit

pytestmark = pytest.mark.mutations

GGUF_BUDGETS = {"qwen2": 400, "qwen3moe": 200, "gpt2": 150, "llama": 150, "qwen2-q8_0": 150}  # 1,050 files
CHECKPOINT_BUDGETS = {"qwen2": 90, "llama": 70, "gpt2": 50, "qwen3moe": 50, "qwen2-sharded": 60}  # 320 folders
SUBPROCESS_SAMPLE = 24  # jobs: 3 commands for a GGUF file, 1 for a checkpoint (~60 processes)
MAX_RSS = 2**30
MAX_CONVERT_SECONDS = 10.0


# ------------------------------------------------------------------------------------------------ seeds

@pytest.fixture(scope="module")
def checkpoint_seeds(tmp_path_factory, shared_fixtures) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    seeds = {arch: make_checkpoint(arch, root / arch) for arch in ("qwen2", "llama", "gpt2", "qwen3moe")}
    seeds["qwen2-sharded"] = make_checkpoint("qwen2", root / "qwen2-sharded", shards=2)
    return seeds


@pytest.fixture(scope="module")
def gguf_seeds(checkpoint_seeds, tmp_path_factory) -> dict[str, Path]:
    from quantizer.quantize import quantize_file
    from quantizer.types import parse_file_type

    root = tmp_path_factory.mktemp("gguf")
    seeds = {}
    for arch in ("qwen2", "qwen3moe", "gpt2", "llama"):
        seeds[arch] = root / f"{arch}.gguf"
        convert_model(checkpoint_seeds[arch], outtype="f32", outfile=seeds[arch])
    seeds["qwen2-q8_0"] = root / "qwen2-q8_0.gguf"
    quantize_file(seeds["qwen2"], seeds["qwen2-q8_0"], parse_file_type("Q8_0"), info=lambda m: None,
                  warn=lambda m: None)
    return seeds


def gguf_corpus(seeds: dict[str, Path]) -> list[dict]:
    """Every header field of the first seed at least once; the others sampled."""
    jobs = []
    for i, (name, budget) in enumerate(GGUF_BUDGETS.items()):
        jobs += M.gguf_mutations(seeds[name], random.Random(f"gguf-{name}"), budget, every_field=i == 0)
    return jobs


def checkpoint_corpus(seeds: dict[str, Path]) -> list[dict]:
    jobs = []
    for name, budget in CHECKPOINT_BUDGETS.items():
        jobs += M.checkpoint_mutations(seeds[name], random.Random(f"checkpoint-{name}"), budget)
    return jobs


@pytest.fixture(scope="module")
def corpora(gguf_seeds, checkpoint_seeds):
    return gguf_corpus(gguf_seeds), checkpoint_corpus(checkpoint_seeds)


@pytest.fixture(scope="module")
def outcomes(corpora) -> dict[str, M.Outcome]:
    gguf_jobs, checkpoint_jobs = corpora
    return {o.job["id"]: o for o in M.run_pool(gguf_jobs + checkpoint_jobs, n_workers=2)}


# ------------------------------------------------------------------------------------------------ the corpora

def test_gguf_corpus(corpora, outcomes, gguf_seeds):
    jobs = corpora[0]
    assert len(jobs) >= 1000
    labels = {f.label for f in M.gguf_fields(gguf_seeds["qwen2"].read_bytes())}
    covered = {j["id"].split(":", 1)[1].split("=")[0] for j in jobs if j["id"].startswith("qwen2:")}
    assert labels <= covered, sorted(labels - covered)[:10]
    problems = [p for j in jobs for p in outcomes[j["id"]].problems]
    assert not problems, "\n".join(problems[:40])
    failed = sum(1 for j in jobs for r in outcomes[j["id"]].results.values() if r["code"] == 1)
    assert failed > len(jobs)  # the corpus does damage: most files are refused by at least one command


def test_checkpoint_corpus(corpora, outcomes):
    jobs = corpora[1]
    assert len(jobs) >= 300
    problems = [p for j in jobs for p in outcomes[j["id"]].problems]
    assert not problems, "\n".join(problems[:40])
    slow = [(j["id"], r["seconds"]) for j in jobs for r in outcomes[j["id"]].results.values()
            if r["seconds"] > MAX_CONVERT_SECONDS]
    assert not slow, slow
    peak = max(outcomes[j["id"]].max_rss for j in jobs)
    assert peak < MAX_RSS, f"a convert reached {peak / 2**20:.0f} MiB (its worker process included)"
    assert sum(1 for j in jobs if outcomes[j["id"]].results["convert"]["code"] == 1) > len(jobs) // 3


def _sample(jobs: list[dict], outcomes, n: int) -> list[dict]:
    """Mostly refused files (their messages are what is compared), some accepted ones."""
    rng = random.Random("sample")
    refused = [j for j in jobs if any(r["code"] == 1 for r in outcomes[j["id"]].results.values())]
    accepted = [j for j in jobs if j not in refused]
    return rng.sample(refused, min(len(refused), n * 4 // 5)) + rng.sample(accepted, min(len(accepted), n // 5))


def _error_line(stderr: str) -> str | None:
    return next((line for line in stderr.splitlines() if line.startswith("error:")), None)


def test_command_line_sample(corpora, outcomes, tmp_path):
    """A sample of both corpora as real processes: the same exit code and error line as in-process."""
    gguf_jobs, checkpoint_jobs = corpora
    sample = _sample(gguf_jobs, outcomes, SUBPROCESS_SAMPLE * 4 // 5) + _sample(checkpoint_jobs, outcomes,
                                                                                 SUBPROCESS_SAMPLE // 5)
    assert len(sample) >= SUBPROCESS_SAMPLE - 4
    for i, job in enumerate(sample):
        work = tmp_path / str(i)
        work.mkdir()
        expected = outcomes[job["id"]].results
        for cmd, args in _command_lines(job, work):
            p = run_toolkit(*args, errors="replace")
            assert p.returncode == expected[cmd]["code"], (job["id"], cmd, p.returncode, p.stderr[-1000:])
            assert "Traceback" not in p.stderr, (job["id"], cmd, p.stderr[-2000:])
            line = _error_line(p.stderr)
            assert (line is None) == (p.returncode == 0), (job["id"], cmd, p.stderr[-1000:])
            if line:
                want = _error_line(expected[cmd]["stderr"])
                assert _without_paths(line) == _without_paths(want), (job["id"], cmd, line, want)
        shutil.rmtree(work)


def _without_paths(line: str) -> str:
    """An error line without the temporary folders it names (the worker's and this test's differ)."""
    import re
    return re.sub(r"/\S*/(?=m\.gguf|model\b|out\b)", "", line)


def _command_lines(job: dict, work: Path):
    """(command, toolkit arguments) of a job, its input materialized in `work` (as the worker does)."""
    if job["kind"] == "gguf":
        path = work / "m.gguf"
        path.write_bytes(M.apply_byte_ops(Path(job["seed"]).read_bytes(), job["ops"]))
        out = work / "out"
        out.mkdir()
        yield "info", ["info", path]
        yield "run", ["run", "-m", path, "-p", "hi", "-n", "2", "-c", "32", "-t", "1", "--temp", "0", "-s", "1"]
        yield "quantize", ["quantize", path, out / "q.gguf", "Q8_0", "1"]
        return
    folder = M.materialize_checkpoint(Path(job["seed"]), work / "model", job["ops"])
    (work / "out").mkdir()
    yield "convert", ["convert", folder, "--outtype", "f32", "--outfile", work / "out" / "out.gguf"]


# ------------------------------------------------------------------------------------------------ the harness itself

def test_pool_reports_planted_faults():
    """A worker killed by a signal, a hung worker and an internal error are each reported against their job, and the
    pool goes on with a fresh worker."""
    jobs = [{"kind": k, "id": f"planted-{k}"} for k in ("segv", "internal", "hang", "nothing")]
    got = {o.job["id"]: o.problems for o in M.run_pool(jobs, n_workers=1, timeout=20)}
    assert got["planted-segv"] == ["planted-segv [worker]: crash: killed by SIGSEGV"]
    assert got["planted-internal"] == ["planted-internal [info]: exit 2: internal error: KeyError: 'planted' (run "
                                       "with --verbose for the traceback)"]
    assert got["planted-hang"] == ["planted-hang [worker]: hang: no answer within the time limit"]
    assert got["planted-nothing"] == []


@pytest.mark.parametrize("result,expected", [
    ({"code": 2, "stderr": "internal error: KeyError: 'x'", "escaped": None}, "exit 2"),
    ({"code": 1, "stderr": "error: a\nerror: b", "escaped": None}, "exit 1"),
    ({"code": 1, "stderr": "Traceback (most recent call last):\nerror: x", "escaped": None}, "exit 1"),
    ({"code": 1, "stderr": "", "escaped": "KeyError: 'x'"}, "traceback"),
    ({"code": 1, "stderr": "error: MemoryError: ", "escaped": None}, "allocation"),
])
def test_problem_is_found(result, expected):
    assert M.problem(result).startswith(expected)
    assert M.problem({"code": 1, "stderr": "error: bad file", "escaped": None}) is None
    assert M.problem({"code": 1, "stderr": "error: bad file", "escaped": None}, ["q.gguf.tmp"]).startswith("partial")


# ------------------------------------------------------------------------------------------------ findings

def _field(seed: Path, label: str) -> M.Field:
    return next(f for f in M.gguf_fields(seed.read_bytes()) if f.label == label)


def _set_field(seed: Path, label: str, new: bytes) -> list:
    return [M._set(_field(seed, label).offset, new)]


GGUF_FINDINGS = {
    # an array count ≥ 2^63: numpy's frombuffer overflowed (internal error: OverflowError) in info, run and quantize
    "array_count_2^64-2": ("kv[tokenizer.ggml.token_type].count", (2**64 - 2).to_bytes(8, "little"),
                           "runs past the end of the file"),
    # a tensor name that is not UTF-8 reached the engine ("'utf-8' codec can't encode character")
    "tensor_name_not_utf8": ("tensor[blk.0.attn_q.weight].name.bytes", b"\xff", "is not a name"),
    # a NUL in a tensor name reached the engine ("embedded null character")
    "tensor_name_nul": ("tensor[blk.0.attn_q.weight].name.bytes", b"\0", "is not a name"),
}


@pytest.mark.parametrize("case", GGUF_FINDINGS)
def test_gguf_finding(gguf_seeds, tmp_path, case):
    label, new, message = GGUF_FINDINGS[case]
    path = tmp_path / "m.gguf"
    path.write_bytes(M.apply_byte_ops(gguf_seeds["qwen2"].read_bytes(), _set_field(gguf_seeds["qwen2"], label, new)))
    results = M.check_gguf(path, tmp_path)
    for cmd, r in results.items():
        assert r["problem"] is None and r["code"] == 1, (cmd, r)
        assert message in _error_line(r["stderr"]), (cmd, r["stderr"])


CHECKPOINT_FINDINGS = {
    # -1 was taken as an id (the last token) and failed in the writer: "internal error: error: argument out of range"
    "bos_token_id_-1": ("bos_token_id", -1, None),
    "max_position_embeddings_10^19": ("max_position_embeddings", 10**19, "outside the range of the uint32"),
    "architectures_int": ("architectures", 10**19, "'architectures' must be a list of class names"),
    "rope_type_list": ("rope_parameters", {"rope_type": []}, "rope_type must be a string"),
    # float("") in the architecture's hyper-parameters: "internal error: ValueError: could not convert string to float"
    "rms_norm_eps_empty_string": ("rms_norm_eps", "", "rms_norm_eps must be a positive number"),
}


@pytest.mark.parametrize("case", CHECKPOINT_FINDINGS)
def test_checkpoint_finding(checkpoint_seeds, tmp_path, case):
    key, value, message = CHECKPOINT_FINDINGS[case]
    folder = M.materialize_checkpoint(checkpoint_seeds["qwen2"], tmp_path / "model",
                                      [["json_set", "config.json", [key], value]])
    r = M.check_checkpoint(folder, tmp_path)["convert"]
    assert r["problem"] is None, r
    if message is None:
        assert r["code"] == 0, r["stderr"]
    else:
        assert r["code"] == 1 and message in _error_line(r["stderr"]), r["stderr"]


# ------------------------------------------------------------------------------------------------ text arguments

def test_prompt_argument_not_utf8(gguf_seeds):
    """`-p $'\\xff'` (Python keeps the byte as a lone surrogate) was an internal UnicodeEncodeError. Decided: refused
    with one line, as every text the user hands over that is not UTF-8 (llama.cpp would feed the bytes on)."""
    p = run_toolkit("run", "-m", gguf_seeds["qwen2"], "-p", b"\xff".decode("utf-8", "surrogateescape"), "-n", "2")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert _error_line(p.stderr) == "error: the text to tokenize is not valid UTF-8 (byte 0xff at character 0)"


def test_interactive_line_not_utf8(gguf_seeds):
    p = run_toolkit("run", "-m", gguf_seeds["qwen2"], "-p", "hi", "-n", "2", "-i", input=b"a\xffb\n", text=False)
    stderr = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in stderr, stderr
    assert "is not valid UTF-8 (byte 0xff at character 1)" in _error_line(stderr)


@pytest.fixture
def binary_file(tmp_path) -> Path:
    path = tmp_path / "binary.txt"
    path.write_bytes(b"ab\xff\xfe\x00\x01")
    return path


def test_prompt_file_not_utf8(gguf_seeds, binary_file):
    """`-f` on a binary file was an internal UnicodeDecodeError."""
    p = run_toolkit("run", "-m", gguf_seeds["qwen2"], "-f", binary_file, "-n", "2")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert _error_line(p.stderr) == f"error: prompt file {binary_file} is not UTF-8 text (byte 0xff at offset 2)"


def test_grammar_file_not_utf8(gguf_seeds, binary_file):
    p = run_toolkit("run", "-m", gguf_seeds["qwen2"], "-p", "hi", "-n", "2", "--grammar-file", binary_file)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert _error_line(p.stderr) == f"error: grammar file {binary_file} is not UTF-8 text (byte 0xff at offset 2)"


def test_chat_template_file_not_utf8(gguf_seeds, binary_file):
    p = run_toolkit("serve", "-m", gguf_seeds["qwen2"], "--chat-template", binary_file, "--port", "0", timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert _error_line(p.stderr) == (f"error: --chat-template file {binary_file} is not UTF-8 text (byte 0xff at "
                                     "offset 2)")


def test_perplexity_file_not_utf8_is_read_as_llama_perplexity_does(gguf_seeds, binary_file):
    """llama-perplexity tokenizes any bytes (a byte that is not UTF-8 becomes U+FFFD in its BPE): no error for that."""
    p = run_toolkit("perplexity", "-m", gguf_seeds["qwen2"], "-f", binary_file, "-c", "8")
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    assert p.returncode == 1 and "you need at least" in _error_line(p.stderr), p.stderr
