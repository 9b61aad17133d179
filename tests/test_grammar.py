"""GBNF grammars (runtime/grammar.py) against llama.cpp's grammar sampler (llama-cpp-python 0.3.36): the same
grammars parse or fail, the same strings are accepted, and the same tokens of the Qwen2 vocabulary (152k) are allowed
at every step of random walks through llama.cpp's sample grammars."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from runtime.grammar import Grammar, GrammarConstraint, GrammarError
from runtime.sampling import Sampler, SamplingParams
from tests.grammar_oracle import byte_tokens, llama_accepts

# llama.cpp's sample grammars, from the sources of the llama.cpp that llama-cpp-python 0.3.36 vendors (make install)
GRAMMARS = Path(__file__).resolve().parent.parent / "build" / "llama-cpp-python-0.3.36-converter" / "grammars"
SAMPLE_GRAMMARS = sorted(GRAMMARS.glob("*.gbnf"))


def test_sample_grammars_are_there():
    """The parametrized tests below run over them: none must silently be an empty set."""
    assert len(SAMPLE_GRAMMARS) >= 8, f"llama.cpp's sample grammars missing in {GRAMMARS}: run make install"

# strings meant to be in (the first ones) or out of each sample grammar's language; which is which is llama.cpp's call
EXAMPLES = {
    "arithmetic": ["1+2=3\n", "(x*y)= 4\n", "a=b\nc=d\n", "1+=2\n", "1+2", "(1=2\n"],
    "c": ["int main(){}", "int f(int x){return x+1;}", "float g(){x=1;}", "int main(", "main(){}"],
    "chess": ["1. e4 e5\n2. Nf3 Nc6\n", "1. O-O Qxd8+\n2. a8=Q b1=N#\n", "1. e4\n", "2. e4 e5\n2. e4 e5\n"],
    "english": ["Hello world", "a b\nc", "Hello  world", " x", ""],
    "japanese": ["こんにちは", "カタカナ ひらがな", "日本語。", "abc", "こんにちは "],
    "json": ['{"a": 1}', '{"a": [true, null, -1.5e3, "x\\n"]}', '{}', '[]', '{"a":}', '{"a": 01}'],
    "json_arr": ['[\n1,\n 2]', '[\n{"a": "b"}]', '[\n]', '[1, 2]', '[\n1,]', '{"a": 1}'],
    "list": ["- a\n", "- one\n- two\n", "- \n", "-a\n", "- a"],
}
BAD_GRAMMARS = ['root ::= "a', "root ::= [a-", "root ::= foo", 'a ::= "x"', 'root ::= "a" \\q', 'root ::= ( "a" ',
                "root ::= *", 'root ::= "a" "\\z"', "root ::= [a-z]{2", 'root ::= root "a" | "b"', "root = \"a\""]
SYNTAX_GRAMMARS = [  # repetitions, escapes, classes, comments, groups
    ('root ::= "a"{2,4} "b"{0,1} [c-e]{3} # comment\n', ["aab", "aacde", "aaaacce", "abccc", "aaaaab", "aaccc"]),
    ('root ::= ("x" | "yz")+ [^x-z\\n]?', ["x", "yzx", "xyza", "xx\n", "", "yzz"]),
    ('root ::= [\\x41-\\x43\\u00e9\\U0001F600] "\\t\\"\\\\\\[\\]\\-"', ["A\t\"\\[]-", "é\t\"\\[]-", "😀\t\"\\[]-",
                                                                      "D\t\"\\[]-", "A"]),
    ('root ::= item{2,}\nitem ::= [0-9]+ ","\n', ["1,2,", "12,", "1,22,333,", "1,2", ""]),
    ('root ::= . . "!"', ["ab!", "日本!", "a!", "abc!"]),
    ('root ::= ( "a" | ) ( "b" )* "c"?', ["", "a", "abbb", "abc", "c", "ca", "aa"]),
]


@pytest.fixture(scope="module")
def byte_ids(qwen2):
    tok = qwen2[1]
    return byte_tokens([tok.piece_bytes(t) for t in range(tok.n_vocab)])


def _eog(tok) -> int:
    return min(tok.eog_ids)


@pytest.mark.parametrize("path", SAMPLE_GRAMMARS, ids=lambda p: p.stem)
def test_sample_grammar_examples_agree_with_llama_cpp(path, qwen2, llama_vocab, byte_ids):
    text = path.read_text()
    grammar = Grammar.parse(text)
    verdicts = []
    for s in EXAMPLES[path.stem]:
        ours = grammar.accepts(s)
        assert ours == llama_accepts(llama_vocab, text, s, byte_ids, _eog(qwen2[1])), s
        verdicts.append(ours)
    assert True in verdicts and False in verdicts  # the examples exercise both answers


@pytest.mark.parametrize("text,strings", SYNTAX_GRAMMARS)
def test_syntax_agrees_with_llama_cpp(text, strings, qwen2, llama_vocab, byte_ids):
    grammar = Grammar.parse(text)
    verdicts = [grammar.accepts(s) for s in strings]
    assert verdicts == [llama_accepts(llama_vocab, text, s, byte_ids, _eog(qwen2[1])) for s in strings]
    assert True in verdicts and False in verdicts


@pytest.mark.parametrize("text", BAD_GRAMMARS)
def test_bad_grammars_are_refused_like_llama_cpp(text, llama_vocab):
    with pytest.raises(GrammarError) as err:
        Grammar.parse(text)
    assert "grammar: " in str(err.value)
    assert llama_vocab.grammar(text) is None


def test_syntax_errors_name_line_and_column():
    with pytest.raises(GrammarError) as err:
        Grammar.parse('root ::= item+\n\nitem ::= "a" [b-\n')
    assert (err.value.line, err.value.column) == (3, 14)
    with pytest.raises(GrammarError) as err:
        Grammar.parse('root ::= "x" missing\n')
    assert (err.value.line, err.value.column) == (1, 14)
    assert "missing" in str(err.value)


def _walk(grammar_text: str, tok, llama_vocab, seed: int, steps: int) -> tuple[int, list[float]]:
    """A random walk through the grammar's tokens: at each step our mask must equal llama.cpp's. Returns the
    steps taken and our time per mask."""
    ours = GrammarConstraint(Grammar.parse(grammar_text), tok)
    theirs = llama_vocab.grammar(grammar_text)
    rng = np.random.default_rng(seed)
    eog = np.zeros(tok.n_vocab, dtype=bool)
    eog[list(tok.eog_ids)] = True
    times = []
    try:
        for step in range(steps):
            t0 = time.perf_counter()
            mask = ours.mask()
            times.append(time.perf_counter() - t0)
            expected = theirs.mask()
            differ = np.flatnonzero(mask != expected)
            assert not differ.size, [(int(i), tok.piece_bytes(int(i)), bool(mask[i])) for i in differ[:5]]
            choices = np.flatnonzero(expected & ~eog)
            if not choices.size:
                break
            short = [i for i in choices if len(tok.piece_bytes(int(i))) <= 2]
            tid = int(rng.choice(short if short and rng.random() < 0.6 else choices))
            ours.accept(tid)
            theirs.accept(tid)
    finally:
        theirs.free()
    return step + 1, times


@pytest.mark.parametrize("path", SAMPLE_GRAMMARS, ids=lambda p: p.stem)
def test_token_masks_equal_llama_cpp(path, qwen2, llama_vocab):
    steps, times = _walk(path.read_text(), qwen2[1], llama_vocab, seed=len(path.stem), steps=40)
    assert steps >= 2
    print(f"\n{path.stem}: {steps} steps, mask over {qwen2[1].n_vocab} tokens: first {times[0] * 1e3:.1f} ms, "
          f"mean {np.mean(times) * 1e3:.2f} ms, max {max(times) * 1e3:.1f} ms")


def test_token_elements_and_partial_utf8_agree_with_llama_cpp(qwen2, llama_vocab):
    tok = qwen2[1]
    im_start = tok.token_to_id["<|im_start|>"]
    text = f'root ::= <|im_start|> !<[{im_start}]> [^a-z]* "é"'
    steps, _ = _walk(text, tok, llama_vocab, seed=3, steps=12)
    assert steps >= 4


def test_token_element_after_characters_allows_only_acceptable_tokens(qwen2):
    """Where a token element follows characters, llama.cpp's mask also lets through tokens that reach it in their
    middle (b"oken" for "ok" then !<[id]>), which its accept then refuses; ours allows whole tokens only there."""
    tok = qwen2[1]
    text = f'root ::= "ok" !<[{tok.token_to_id["<|im_start|>"]}]>'
    c = GrammarConstraint(Grammar.parse(text), tok)
    allowed = [int(t) for t in c.allowed()]
    assert tok.token_to_id["ok"] in allowed and tok.token_to_id["oken"] not in allowed
    for t in allowed:
        fresh = GrammarConstraint(Grammar.parse(text), tok)
        fresh.accept(t)


def test_accept_refuses_what_the_mask_refuses(qwen2):
    tok = qwen2[1]
    c = GrammarConstraint(Grammar.parse('root ::= "yes" | "no"'), tok)
    mask = c.mask()
    refused = int(np.flatnonzero(~mask)[0])
    assert not c.allows(refused)
    with pytest.raises(GrammarError):
        c.accept(refused)
    allowed = [int(t) for t in np.flatnonzero(mask)]
    assert {tok.piece_bytes(t) for t in allowed} <= {b"y", b"ye", b"yes", b"n", b"no"}
    assert all(c.allows(t) for t in allowed)


def test_sampler_generates_sentences_of_the_grammar(qwen2):
    tok = qwen2[1]
    grammar = Grammar.parse('root ::= "[" item ("," " "? item){0,4} "]"\nitem ::= [0-9]{1,3} | "\\"" [a-z ]{0,8} "\\""\n')
    rng = np.random.default_rng(0)
    for seed in range(3):
        c = GrammarConstraint(grammar, tok)
        sampler = Sampler(SamplingParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        out: list[int] = []
        bias = np.zeros(tok.n_vocab)
        bias[list(tok.eog_ids)] = 20.0  # end once allowed
        for _ in range(200):
            t = sampler.sample(rng.normal(size=tok.n_vocab) + bias, out, constraint=c)
            if tok.is_eog(t):
                break
            c.accept(t)
            out.append(t)
        assert tok.is_eog(t), "the walk did not end"
        assert grammar.accepts(tok.decode(out)), tok.decode(out)


def test_mask_time_on_qwen2_vocabulary(qwen2):
    """Prints the time to mask the 152k-token vocabulary per generated token (targets belong in `make bench`)."""
    tok = qwen2[1]
    c = GrammarConstraint(Grammar.parse((GRAMMARS / "json.gbnf").read_text()), tok)
    text = '{"name": "Ada Lovelace", "born": 1815, "tags": ["math", "poetry"], "ok": true}'
    ids = tok.encode(text, add_bos=False)
    times = []
    for t in ids:
        t0 = time.perf_counter()
        mask = c.mask()
        times.append(time.perf_counter() - t0)
        assert mask[t]
        c.accept(t)
    assert c.is_complete()
    print(f"\njson.gbnf over {tok.n_vocab} tokens, {len(ids)} steps: mean {np.mean(times) * 1e3:.2f} ms, "
          f"median {np.median(times) * 1e3:.2f} ms, max {max(times) * 1e3:.1f} ms per step")
