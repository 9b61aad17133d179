"""Sampling is total (issue 18): settings checked against one table (runtime.sampling.RANGES) by the sampler, the
command line and the Python API; settings in range always give a token (a subnormal temperature samples greedily, a
subnormal repetition penalty stays finite); NaN/inf logits are a one-line error naming the model as damaged."""
from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest

from common.errors import DamagedModel, UserError
from common.ggufio import GGUFFile
from converter.convert import convert_model
from runtime.sampling import RANGES, Sampler, SamplingParams
from tests.helpers import REPO, TOOLKIT

LOGITS = (np.random.default_rng(0).normal(size=300) * 5).astype(np.float32)
TOP = int(np.argmax(LOGITS))
PROMPT = "Once upon a time"


# -- the sampler --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temp", [1e-310, 5e-324, 1e-300])
def test_a_subnormal_temperature_samples_greedily(temp):
    """Logits/temp overflows: the draw is the limit as temp -> 0, the largest logit (it used to be 'Probabilities
    contain NaN')."""
    for seed in range(20):
        assert Sampler(SamplingParams(temp=temp, seed=seed, top_k=0, top_p=1.0, min_p=0.0)).sample(LOGITS, []) == TOP


def test_a_huge_temperature_samples_uniformly():
    draws = {Sampler(SamplingParams(temp=1e308, seed=s, top_k=0, top_p=1.0, min_p=0.0)).sample(LOGITS, [])
             for s in range(200)}
    assert len(draws) > 100


@pytest.mark.parametrize("penalty", [1e-320, 5e-324, 1e308])
def test_extreme_repeat_penalties_still_sample(penalty):
    """1e-320 used to be a zero-size reduction. With a tiny penalty a repeated token with a positive logit wins (its
    penalized logit is clamped to the largest float); with a huge one it is never drawn."""
    repeated = [int(i) for i in np.argsort(LOGITS)[-5:-2]]  # positive logits, not the largest
    for seed in range(10):
        token = Sampler(SamplingParams(repeat_penalty=penalty, seed=seed)).sample(LOGITS, repeated)
        assert (token in repeated) == (penalty < 1)


def test_a_huge_penalty_on_every_token_still_samples():
    """Every token repeated, every logit negative: a penalty of 1e308 sends them all to the lowest float, not -inf
    (from which nothing could be drawn); a masked token stays masked."""
    logits = -np.abs(LOGITS) - 2.0
    logits[5] = -np.inf
    everything = list(range(logits.size))
    for seed in range(10):
        token = Sampler(SamplingParams(repeat_penalty=1e308, repeat_last_n=-1, seed=seed)).sample(logits, everything)
        assert 0 <= token < logits.size and token != 5


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_logits_are_a_damaged_model(bad):
    logits = LOGITS.copy()
    logits[7] = bad
    for temp in (0.0, 0.8):
        with pytest.raises(DamagedModel, match=r"1 NaN or infinite logit\(s\) \(of 300\).*damaged"):
            Sampler(SamplingParams(temp=temp)).sample(logits, [])
    with pytest.raises(DamagedModel, match="no finite logit"):
        Sampler(SamplingParams()).sample(np.full(10, -np.inf), [])


def test_masked_tokens_are_not_damage():
    logits = LOGITS.copy()
    logits[TOP] = -np.inf  # as ignore_eos masks end-of-generation tokens
    assert Sampler(SamplingParams(temp=0.0)).sample(logits, []) == int(np.argsort(LOGITS)[-2])
    assert Sampler(SamplingParams(temp=1e-310)).sample(logits, []) == int(np.argsort(LOGITS)[-2])


BAD_SETTINGS = [("temp", math.nan), ("temp", math.inf), ("temp", -0.5), ("top_p", 1.5), ("top_p", math.nan),
                ("min_p", -1e-9), ("repeat_penalty", 0.0), ("repeat_penalty", -1.0), ("repeat_penalty", math.inf),
                ("top_k", -1), ("top_k", 2.5), ("repeat_last_n", -2)]


@pytest.mark.parametrize("field,value", BAD_SETTINGS)
def test_settings_out_of_range_are_refused(field, value):
    with pytest.raises(UserError, match=f"^{field} must be .*, got {value!r}$"):
        SamplingParams(**{field: value})


def test_ranges_as_schema_bounds():
    assert RANGES["repeat_penalty"].bounds() == {"gt": 0.0} and RANGES["top_p"].bounds() == {"ge": 0.0, "le": 1.0}
    assert not RANGES["temp"].contains(True) and RANGES["temp"].contains(1e-310)


# -- the command line and the Python API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stories(tmp_path_factory, shared_fixtures):
    root = tmp_path_factory.mktemp("sampling")
    path = root / "stories.gguf"
    convert_model(shared_fixtures / "stories260K", outtype="f32", outfile=path)
    damaged = root / "damaged.gguf"  # output_norm.weight all NaN: every logit is NaN
    shutil.copy(path, damaged)
    with GGUFFile(damaged) as g:
        entry = next(e for e in g.tensors if e.info.name == "output_norm.weight")
    with open(damaged, "r+b") as f:
        f.seek(entry.offset)
        f.write(np.full(entry.info.nbytes // 4, np.nan, np.float32).tobytes())
    return path, damaged


def _run(model, *args) -> subprocess.Popen:
    cmd = [*TOOLKIT, "run", "-m", str(model), "-p", PROMPT, "-n", "16", "-t", "1", "-s", "3", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_cli(stories):
    path, damaged = stories
    refused = {("--temp", "nan"): "--temp must be a finite number >= 0, got nan",
               ("--temp", "inf"): "--temp must be a finite number >= 0, got inf",
               ("--repeat-penalty", "0"): "--repeat-penalty must be a finite number > 0, got 0.0",
               ("--top-p", "1.5"): "--top-p must be a finite number >= 0 and <= 1, got 1.5",
               ("--top-k", "-1"): "--top-k must be an integer >= 0, got -1"}
    procs = {args: _run(path, *args) for args in [*refused, ("--temp", "0"), ("--temp", "1e-310"),
                                                  ("--temp", "5e-324"), ("--repeat-penalty", "1e-320")]}
    procs["damaged"] = _run(damaged)
    out = {}
    for key, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[key] = (p.returncode, stdout, stderr)
    for args, message in refused.items():
        code, _, err = out[args]
        assert code == 1 and err.strip() == f"error: {message}", err
    greedy = out["--temp", "0"]
    assert greedy[0] == 0 and len(greedy[1]) > len(PROMPT) + 10, greedy
    for args in [("--temp", "1e-310"), ("--temp", "5e-324")]:
        assert out[args][:2] == greedy[:2], out[args]  # sampled at the limit: greedily
    assert out["--repeat-penalty", "1e-320"][0] == 0, out["--repeat-penalty", "1e-320"]
    code, _, err = out["damaged"]
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1] == ("error: damaged.gguf: the model computed 512 NaN or infinite logit(s) (of 512): "
                                       "the model file is damaged or its weights overflow"), err
    assert "Traceback" not in err and "internal error" not in err


def test_python_api(stories):
    from runtime.api import Llama
    path, damaged = stories
    llm = Llama(str(path), n_ctx=64, verbose=False, seed=1)
    for kw, message in [({"temperature": math.nan}, "temperature must be a finite number >= 0, got nan"),
                        ({"repeat_penalty": 0.0}, "repeat_penalty must be a finite number > 0, got 0.0"),
                        ({"min_p": math.inf}, "min_p must be a finite number >= 0 and <= 1, got inf")]:
        with pytest.raises(UserError, match=f"^{message}$"):
            llm.create_completion(PROMPT, max_tokens=4, **kw)
    greedy = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert llm.create_completion(PROMPT, max_tokens=8, temperature=1e-310)["choices"][0]["text"] == greedy
    llm.close()
    bad = Llama(str(damaged), n_ctx=64, verbose=False)
    with pytest.raises(DamagedModel, match="damaged.gguf: .* damaged"):
        bad.create_completion(PROMPT, max_tokens=4)
    bad.close()
