"""The runtime tokenizer (runtime/tokenizer.py), built from GGUF metadata alone, against independent oracles:
HF `tokenizers` (codeshell, gpt2, qwen2), `sentencepiece` (llama) and llama.cpp itself (all four, plus variants of the
vocabularies with other pre-tokenizers, user-defined tokens and no space prefix; plus llama.cpp's own vocabularies of
the tokenizer models no converter of ours writes: WordPiece `bert`, Gemma 4's BPE and the Unigram `t5` of
nomic-bert-moe, with variants of its normalization flags), and llama.cpp's own test vectors for every vocabulary of its
test set."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from converter.convert import convert_model
from fixtures import REPO_ROOT, make_checkpoint, tokenizer_corpus
from runtime.tokenizer import _BYTE_TO_CHAR, StreamDecoder, Tokenizer, UnsupportedTokenizer
from common.ggufio import KV, GGUFFile, encode_header

ARCHES = ("codeshell", "llama", "gpt2", "qwen2")
NEEDS_SHARED = ("codeshell", "llama")  # real tokenizer files from ../shared/fixtures
# llama.cpp's vocabulary files (../shared/fixtures/llama-vocab) for tokenizer models we never convert to
LLAMA_VOCABS = ("bert-bge", "gemma-4", "nomic-bert-moe")
SPECIALS = {
    "codeshell": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<|end|>"],
    "llama": ["<s>", "</s>", "<unk>"],
    "gpt2": ["<|endoftext|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "bert-bge": ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[unused0]"],
    # control, user-defined (<|"|>, <|tool_response>: end of generation) and a normal </s>
    "gemma-4": ["<bos>", "<eos>", "<|turn>", "<turn|>", "<|\"|>", "<|tool_response>", "</s>", "<unused0>"],
    # control, unknown and unused tokens; <mask> strips the spaces before it in llama.cpp (invisible after UGM's
    # space merging)
    "nomic-bert-moe": ["<s>", "</s>", "<pad>", "<unk>", "<mask>", "[PAD250001]"],
}


def _llama_cpp():
    if os.environ.get("CI") == "true":
        import llama_cpp
        return llama_cpp
    return pytest.importorskip("llama_cpp")


@dataclass
class Model:
    arch: str
    folder: Path
    gguf: Path
    tok: Tokenizer
    corpus: list[str]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizer")


_MODELS: dict[str, Model] = {}


def _model(request, root: Path, arch: str) -> Model:
    if arch in LLAMA_VOCABS:
        return _llama_vocab_model(request.getfixturevalue("shared_fixtures"), arch)
    if arch in NEEDS_SHARED:
        request.getfixturevalue("shared_fixtures")
    if arch not in _MODELS:
        folder = make_checkpoint(arch, root / arch)
        gguf = root / f"{arch}.gguf"
        convert_model(folder, outfile=gguf, vocab_only=True, info=lambda s: None)
        with GGUFFile(gguf) as g:
            tok = Tokenizer.from_gguf(g)
        _MODELS[arch] = Model(arch, folder, gguf, tok, tokenizer_corpus(2000, specials=SPECIALS[arch]))
    return _MODELS[arch]


def _llama_vocab_model(shared: Path, name: str) -> Model:
    if name not in _MODELS:
        gguf = shared / "llama-vocab" / f"ggml-vocab-{name}.gguf"
        with GGUFFile(gguf) as g:
            tok = Tokenizer.from_gguf(g)
        _MODELS[name] = Model(name, gguf.parent, gguf, tok, tokenizer_corpus(2000, specials=SPECIALS[name]))
    return _MODELS[name]


@pytest.fixture(scope="module", params=ARCHES)
def model(request, root) -> Model:
    """A vocabulary our converter wrote from a checkpoint (with its tokenizer files for the HF oracles)."""
    yield _model(request, root, request.param)


@pytest.fixture(scope="module", params=ARCHES + LLAMA_VOCABS)
def any_model(request, root) -> Model:
    """Every tokenizer model: ours converted, and llama.cpp's own files of the models we do not convert to."""
    yield _model(request, root, request.param)


@pytest.fixture(scope="module", autouse=True)
def _forget_models():
    yield
    _MODELS.clear()


def _llama(path: Path):
    return _llama_cpp().Llama(str(path), vocab_only=True, verbose=False)


def _encodable(tok: Tokenizer, s: str) -> bool:
    """False when the vocabulary cannot represent some byte of s (llama.cpp then drops it, so no round trip)."""
    if tok.is_spm:
        return True
    byte_token = (lambda b: f"<0x{b:02X}>") if tok.model == "gemma4" else _BYTE_TO_CHAR.__getitem__
    return all(byte_token(b) in tok.token_to_id for b in s.encode("utf-8"))


def _detokenize(llm, ids: list[int], special: bool) -> str:
    """llama-cpp-python's Llama.detokenize; it copies each piece through a 32-byte buffer, so sequences with longer
    pieces (CodeShell has 128-byte whitespace tokens) go through llama_token_to_piece with a large buffer instead,
    with the same leading-space rule."""
    llama_cpp = _llama_cpp()
    vocab = llm._model.vocab
    buf = (llama_cpp.ctypes.c_char * 1024)()
    pieces = []
    for t in ids:
        n = llama_cpp.llama_token_to_piece(vocab, t, buf, len(buf), 0, special)
        pieces.append(bytes(buf[:n]))
    if max(map(len, pieces), default=0) <= 32:
        return llm.detokenize(ids, special=special).decode("utf-8", "replace")
    out = b"".join(pieces)
    if ids and ids[0] == llm.token_bos() and out[:1] == b" ":
        out = out[1:]
    return out.decode("utf-8", "replace")


# ----------------------------------------------------------------------------------------------------------------------
# independent oracles
# ----------------------------------------------------------------------------------------------------------------------


def test_encode_matches_hf_tokenizers_or_sentencepiece(model):
    tok = model.tok
    bad = []
    if model.arch == "llama":
        import sentencepiece
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model.folder / "tokenizer.model"))
        for s in model.corpus:  # sentencepiece reads "<s>" literally: compare without special-token parsing
            if tok.encode(s, add_bos=False, parse_special=False) != sp.encode(s):
                bad.append(s)
    else:
        from tokenizers import Tokenizer as HFTokenizer
        hf = HFTokenizer.from_file(str(model.folder / "tokenizer.json"))
        for s in model.corpus:
            # Qwen2's HF tokenizer NFC-normalizes first; llama.cpp (and we) do not
            ours = s if model.arch != "qwen2" else unicodedata.normalize("NFC", s)
            if tok.encode(ours, add_bos=False) != hf.encode(s, add_special_tokens=False).ids:
                bad.append(s)
    assert not bad, f"{len(bad)} mismatches, first {bad[:5]!r}"


def test_encode_matches_llama_cpp(any_model):
    model = any_model
    llm = _llama(model.gguf)
    tok = model.tok
    bad = []
    for k, s in enumerate(model.corpus):
        b = s.encode()
        if tok.encode(s, add_bos=False) != llm.tokenize(b, add_bos=False, special=True):
            bad.append(("special", s))
        if tok.encode(s, add_bos=False, parse_special=False) != llm.tokenize(b, add_bos=False, special=False):
            bad.append(("literal", s))
        if k % 4 == 0 and tok.encode(s) != llm.tokenize(b, add_bos=True, special=True):  # the model's BOS/EOS
            bad.append(("default", s))
    assert not bad, f"{len(bad)} mismatches, first {bad[:5]!r}"


def test_decode_matches_llama_cpp(any_model):
    model = any_model
    llm = _llama(model.gguf)
    tok = model.tok
    bad, compared = [], 0
    for s in model.corpus:
        # with a space prefix (SentencePiece, Unigram): with BOS, as the model wants (llama-cpp-python removes the
        # prefix's space only after a leading BOS; llama.cpp and we, from any first piece); the others without
        # (llama-cpp-python strips a space after a leading BOS even for them; llama.cpp itself does not)
        ids = tok.encode(s) if tok.add_space_prefix else tok.encode(s, add_bos=False)
        if ids[:1] == [tok.bos_id] and not tok.add_space_prefix:
            continue  # the text starts with the BOS token's text
        compared += 1
        for special in (True, False):
            if tok.decode(ids, skip_special=not special) != _detokenize(llm, ids, special):
                bad.append((special, s))
    assert compared >= len(model.corpus) * 0.9
    assert not bad, f"{len(bad)} mismatches, first {bad[:5]!r}"


def test_special_ids_and_eog_match_llama_cpp(any_model):
    llama_cpp = _llama_cpp()
    llm = _llama(any_model.gguf)
    vocab = llm._model.vocab
    tok = any_model.tok

    def ours(tid):  # llama.cpp's "no such token" is -1
        return -1 if tid is None else tid

    assert tok.n_vocab == llm.n_vocab()
    assert ours(tok.bos_id) == llm.token_bos() and ours(tok.eos_id) == llm.token_eos()
    assert ours(tok.sep_id) == llama_cpp.llama_vocab_sep(vocab)
    assert tok.add_bos == bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    assert tok.add_eos == bool(llama_cpp.llama_vocab_get_add_eos(vocab))
    assert tok.eog_ids == {i for i in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert tok.eos_id is None or tok.eos_id in tok.eog_ids
    assert tok.eog_ids  # every model can stop (BERT: [PAD], llama.cpp's FIM pad)
    special = [i for i in range(tok.n_vocab) if tok.is_special(i)]
    assert special == [i for i in range(tok.n_vocab) if llama_cpp.llama_vocab_get_attr(vocab, i) & 0b1001]


def test_fuzz_matches_llama_cpp(any_model):
    """Short random strings over characters that separate the pre-tokenizer classes: llama.cpp's whitespace set
    (not \\x1c-\\x1f), ASCII-only case-insensitive contractions, non-ASCII numbers and letters, unassigned code points,
    special-token and byte-token look-alikes."""
    palette = list("aZsStTrReEvVmMlLdD' 09") + [
        "  ", "   ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2000", "\u2028",
        "\u3000", "\u200b", "!", "?", ".", ",", ";", "$", "+", "<", "=", ">", "^", "~", "|", "`", "_", "٣", "²", "½",
        "Ⅻ", "１", "é", "ß", "ſ", "\u212a", "İ", "ǅ", "\u0301", "中", "文", "😀", "👍🏽", "\ue000", "\u0378",
        "\U000e0080", "\x00", "\x7f", "\U00011f04", "ʼ", "’", "ﬁ", "▁", "<0x41>", "Ġ", "1234", "hello", "The",
        "한", "Å", "\u0345", "\u00ad", "\ufffd", "\U0002b81f", "\U0002b820", "Σ", "ς", "\u1e9e", "€", "©", "¨", "ⅰ",
        "unaffable", "##able",
    ] + SPECIALS[any_model.arch]
    model = any_model
    rng = random.Random(1)
    strings = ["".join(rng.choice(palette) for _ in range(rng.randint(1, 24))) for _ in range(800)]
    strings += ["it'ſa", "'ſ'K", "'S'RE'Ve'LL", "\x1c\x1c a \x1f", "a\x85\x85b", "x \u2028\u2028y", "٣٣٣٣ 12345 ²²",
                "a   \n\n  b", " \r\n \r\n x", "!!\n\n", "x\u3000\u3000", "Ⅻ Ⅻ", "\u0378\u0378 \u0378"]
    llm = _llama(model.gguf)
    tok = model.tok
    bad = [s for s in strings for ps in (True, False)
           if tok.encode(s, add_bos=False, parse_special=ps) != llm.tokenize(s.encode(), add_bos=False, special=ps)]
    assert not bad, f"{len(bad)} mismatches, first {bad[:5]!r}"


# ----------------------------------------------------------------------------------------------------------------------
# round trip and streaming
# ----------------------------------------------------------------------------------------------------------------------


# WordPiece loses case, accents and spaces, Unigram normalizes (see test_unigram_decode_encode_is_stable): no round trip
@pytest.mark.parametrize("arch", ARCHES + ("gemma-4",))
def test_decode_encode_round_trip(request, root, arch):
    model = _model(request, root, arch)
    tok = model.tok
    # SentencePiece puts a "▁" after every special token (llama.cpp does not remove it when decoding): the round trip
    # holds for text read literally
    ps = not tok.is_spm
    skipped, bad = 0, []
    for s in model.corpus:
        if not _encodable(tok, s):
            skipped += 1
            continue
        if tok.decode(tok.encode(s, add_bos=False, parse_special=ps)) != s:
            bad.append(s)
        if tok.is_spm and tok.decode(tok.encode(s, parse_special=False), skip_special=True) != s:  # BOS skipped
            bad.append(s)
    assert skipped <= len(model.corpus) // 100  # CodeShell has no token for some bytes (\x7f, \x01, ...)
    assert not bad, f"{len(bad)} failures, first {bad[:5]!r}"


def test_unigram_decode_encode_is_stable(request, root):
    """Unigram's normalization (NFKC-like map, merged spaces) loses the original text, but what decoding gives is
    normalized already: it encodes to the same ids. Text that is normal already (printable ASCII, single spaces, read
    literally) comes back unchanged."""
    model = _model(request, root, "nomic-bert-moe")
    tok = model.tok
    skipped, plain, bad = 0, 0, []
    for s in model.corpus:
        ids = tok.encode(s, add_bos=False)
        if tok.unk_id in ids:  # <unk> decodes as its text, not as the characters it stood for
            skipped += 1
            continue
        if tok.encode(tok.decode(ids), add_bos=False) != ids:
            bad.append(s)
        if s.isascii() and s.isprintable() and s == " ".join(s.split()):
            plain += 1
            if tok.decode(tok.encode(s, add_bos=False, parse_special=False)) != s:
                bad.append(("plain", s))
    assert skipped <= len(model.corpus) // 10 and plain >= len(model.corpus) // 5
    assert not bad, f"{len(bad)} failures, first {bad[:5]!r}"


def _stream(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    dec = StreamDecoder(tok, skip_special) if skip_special else StreamDecoder(tok)
    return [dec.feed(t) for t in ids] + [dec.flush()]


def _clean(chunk: str) -> bool:
    return "\ufffd" not in chunk and not any(0xD800 <= ord(c) <= 0xDFFF for c in chunk)


def test_stream_decoder_concatenates_to_decode(any_model):
    model = any_model
    tok = model.tok
    for s in model.corpus:
        for ids in (tok.encode(s, add_bos=False), tok.encode(s)):
            for skip in (False, True):
                full = tok.decode(ids, skip_special=skip)
                chunks = _stream(tok, ids, skip)
                assert "".join(chunks) == full, s
                if "\ufffd" not in full:
                    assert all(_clean(c) for c in chunks), (s, chunks)
    rng = random.Random(0)  # arbitrary id sequences, invalid UTF-8 included
    for _ in range(300):
        ids = [rng.randrange(tok.n_vocab) for _ in range(rng.randint(1, 12))]
        assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_stream_decoder_waits_for_whole_characters(model):
    tok = model.tok
    text = "你好😀👍🏽 x"
    ids = tok.encode(text, add_bos=False)
    byte_ids = [i for i in ids if len(tok.piece_bytes(i)) == 1 and tok.piece_bytes(i)[0] >= 0x80]
    if model.arch in ("llama", "gpt2", "qwen2"):
        assert byte_ids, "expected characters split across byte tokens"
    chunks = _stream(tok, ids)
    assert "".join(chunks) == text
    assert all(_clean(c) for c in chunks)
    if byte_ids:
        assert "" in chunks[:-1]  # a token holding part of a character produced nothing yet
    # feeding the bytes of one emoji one token at a time
    if tok.is_spm:
        emoji = [tok.token_to_id[f"<0x{b:02X}>"] for b in "😀".encode()]
    else:
        emoji = [tok.token_to_id[_BYTE_TO_CHAR[b]] for b in "😀".encode()]
    dec = StreamDecoder(tok)
    assert [dec.feed(t) for t in emoji] == ["", "", "", "😀"] and dec.flush() == ""
    dec = StreamDecoder(tok)  # a truncated character at the end becomes U+FFFD only at flush
    assert [dec.feed(t) for t in emoji[:2]] == ["", ""] and dec.flush() == "\ufffd"


# ----------------------------------------------------------------------------------------------------------------------
# pieces, specials, API details
# ----------------------------------------------------------------------------------------------------------------------


def test_piece_bytes(request, root):
    llama = _model(request, root, "llama").tok
    assert llama.piece_bytes(llama.token_to_id["<0x41>"]) == b"A"
    assert llama.piece_bytes(llama.token_to_id["▁Hello"]) == b" Hello"
    assert llama.piece_bytes(llama.token_to_id["</s>"]) == b"</s>"
    assert llama.piece_bytes(llama.token_to_id["</s>"], special=False) == b""
    hello = llama.encode("Hello world")
    assert hello[0] == llama.bos_id and llama.token_text(hello[1]) == "▁Hello"  # the space prefix
    assert llama.decode(hello[1:]) == "Hello world"  # first piece loses its leading space
    assert llama.decode(hello) == "<s> Hello world"  # BOS rendered: the space stays, as in llama.cpp
    assert llama.decode(hello, skip_special=True) == "Hello world"  # BOS skipped: as llama-cpp-python's detokenize
    assert llama.encode("a", add_bos=False) == [llama.token_to_id["▁a"]]
    gpt2 = _model(request, root, "gpt2").tok
    assert gpt2.piece_bytes(gpt2.token_to_id["Ġthe"]) == b" the"
    assert gpt2.piece_bytes(gpt2.token_to_id["Ċ"]) == b"\n"
    assert gpt2.piece_bytes(gpt2.token_to_id["<|endoftext|>"]) == b"<|endoftext|>"
    assert b"".join(gpt2.piece_bytes(t) for t in gpt2.encode("héllo 😀")) == "héllo 😀".encode()


def test_special_token_parsing(request, root):
    qwen = _model(request, root, "qwen2").tok
    start, end = qwen.token_to_id["<|im_start|>"], qwen.token_to_id["<|im_end|>"]
    ids = qwen.encode("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == start and end in ids
    literal = qwen.encode("<|im_start|>user", parse_special=False)
    assert start not in literal and qwen.decode(literal) == "<|im_start|>user"
    assert qwen.decode(ids, skip_special=True) == "user\nhi\n"
    assert qwen.eog_ids >= {end, qwen.token_to_id["<|endoftext|>"]}
    assert qwen.encode("") == [] and qwen.encode("", add_bos=True) == [qwen.bos_id]
    llama = _model(request, root, "llama").tok
    assert llama.encode("") == [llama.bos_id] and llama.encode("", add_bos=False) == []
    assert llama.encode("a</s>b", add_bos=False)[1] == llama.eos_id
    assert llama.eos_id not in llama.encode("a</s>b", add_bos=False, parse_special=False)


def test_wordpiece(request, root):
    """BERT's WordPiece as llama.cpp runs it: lower case without accents (İ → i, 한 → its first jamo), punctuation
    and CJK ideographs as words of their own, continuation pieces, [UNK] for a word that cannot be cut, llama.cpp's
    control characters (\\x1c) dropped and its whitespace (U+3000) between words, [CLS] ... [SEP] around the text;
    pieces decode with their word-initial space."""
    tok = _model(request, root, "bert-bge").tok
    ids = tok.encode("Unaffable Äpfel, 中文 😀")
    assert [tok.token_text(i) for i in ids] == ["[CLS]", "▁una", "ffa", "ble", "▁ap", "fe", "l", "▁,", "▁中", "▁文",
                                                "[UNK]", "[SEP]"]
    assert tok.decode(ids[1:-1]) == " unaffable apfel , 中 文[UNK]"
    assert tok.decode(ids, skip_special=True) == " unaffable apfel , 中 文"
    assert tok.encode("a\x1cb", add_bos=False) == [tok.token_to_id["▁ab"]]
    assert tok.encode("a\u3000b", add_bos=False) == [tok.token_to_id["▁a"], tok.token_to_id["▁b"]]
    assert [tok.token_text(i) for i in tok.encode("İstanbul 한국", add_bos=False)] == ["▁istanbul", "▁ᄒ", "ᄀ"]
    assert tok.encode("[CLS]x", add_bos=False) == [tok.bos_id, tok.token_to_id["▁x"]]
    assert tok.encode("[CLS]x", add_bos=False, parse_special=False)[:3] == [tok.token_to_id["▁["],
                                                                           tok.token_to_id["▁cl"],
                                                                           tok.token_to_id["s"]]
    assert tok.encode("", add_bos=True) == [tok.bos_id, tok.sep_id] and tok.encode("", add_bos=False) == []


def test_unigram(request, root):
    """Unigram (XLM-RoBERTa's vocabulary in nomic-bert-moe): the charsmap normalizes (full-width letters, ligatures,
    Roman numerals, zero-width space), runs of whitespace become one ▁ before each word and whitespace alone is no
    token; a run of characters without a token is one <unk>; the model adds <s> ... </s>. Decoding gives ▁ back as
    spaces, the first space removed."""
    tok = _model(request, root, "nomic-bert-moe").tok
    assert tok.is_ugm and tok.add_bos and tok.add_eos and tok.add_space_prefix

    def texts(s, **kw):
        return [tok.token_text(i) for i in tok.encode(s, add_bos=False, **kw)]

    assert texts("Hello  world") == texts(" Hello\t\n world ") == ["▁Hello", "▁world"]
    assert texts("ＨＥＬＬＯ ﬁx Ⅻ") == texts("HELLO fix XII")
    assert texts("a\u200bb") == ["▁a", "▁b"]
    assert texts("e\u0301") == ["▁é"]  # composed
    assert tok.encode("\t\n ", add_bos=False) == []
    assert texts("a 𓀀𓀁 b") == ["▁a", "▁", "<unk>", "▁b"]  # two unknown characters, one <unk>
    assert texts("<s>x</s>") == ["<s>", "▁x", "</s>"]
    assert "<s>" not in texts("<s>x", parse_special=False)
    ids = tok.encode("Hello  world")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "<s> Hello world</s>"
    assert tok.decode(ids, skip_special=True) == "Hello world"
    assert tok.decode(ids[1:-1]) == "Hello world"
    assert tok.encode("", add_bos=False) == [] and tok.encode("") == [tok.bos_id, tok.eos_id]


def test_unigram_variants_match_llama_cpp(request, root):
    """Unigram with the flags and tokens nomic-bert-moe does not have: spaces kept (no remove_extra_whitespaces) with
    and without the space prefix, no charsmap at all, and user-defined tokens (unused ones renamed) that llama.cpp keeps
    unnormalized as far as the text follows any of them, and one holding a ▁ after its start (no cut at ▁)."""
    model = _model(request, root, "nomic-bert-moe")
    with GGUFFile(model.gguf) as g:
        tokens = list(g.value("tokenizer.ggml.tokens"))
        types = np.array(g.value("tokenizer.ggml.token_type"))
    user = ["ｱｲ", "e\u0301x", "ab c", "Ⅻ!", "a▁b", "\u3000\u3000"]
    first = model.tok.token_to_id["[PAD250001]"]
    for k, text in enumerate(user):
        tokens[first + k] = text
        types[first + k] = 4
    cases = [_variant(model.gguf, root / "u-spaces.gguf", remove_extra_whitespaces=False),
             _variant(model.gguf, root / "u-spaces-noprefix.gguf", remove_extra_whitespaces=False,
                      add_space_prefix=False),
             _variant(model.gguf, root / "u-nomap.gguf", precompiled_charsmap=None),
             _variant(model.gguf, root / "u-user.gguf", tokens=tokens, token_type=types)]
    corpus = tokenizer_corpus(500, seed=3, specials=user + ["<s>", "<mask>"])
    corpus += ["ｱｳ ｱｲ ｱ", "e\u0301y e\u0301x", "ab cd ab c", "Ⅻ? Ⅻ! Ⅻ", "a b a▁b", "x\u3000\u3000\u3000y", "ＡＢ  ｶﾞ",
               "  lead and trail  ", "\t\ttabs\n\nnewlines"]
    for path in cases:
        tok, llm = _both(path)
        bad = []
        for s in corpus:
            bad += _encode_mismatches(tok, llm, s)
            ids = tok.encode(s)
            if ids != llm.tokenize(s.encode(), add_bos=True, special=True):
                bad.append(("default", s))
            if not tok.add_space_prefix:  # llama-cpp-python strips a space after a leading BOS, llama.cpp does not
                ids = tok.encode(s, add_bos=False)
                if ids[:1] == [tok.bos_id]:
                    continue
            for special in (True, False):
                if tok.decode(ids, not special) != _detokenize(llm, ids, special):
                    bad.append(("decode", special, s))
        assert not bad, f"{path.name}: {len(bad)} mismatches, first {bad[:5]!r}"


def test_gemma4_spaces_newlines_and_bytes(request, root):
    """Gemma 4's BPE: spaces are ▁ in the tokens, a run of newlines is one token, a character without a token is
    written as <0xXX> byte tokens; BOS is always added."""
    tok = _model(request, root, "gemma-4").tok
    assert tok.add_bos and tok.encode("a")[0] == tok.bos_id
    ids = tok.encode("Hello world\n\n\nbye", add_bos=False)
    assert [tok.token_text(i) for i in ids] == ["Hello", "▁world", "\n\n\n", "bye"]
    assert tok.decode(ids) == "Hello world\n\n\nbye"
    rare = "\U000e0080"  # a tag character: no token of its own
    ids = tok.encode(rare, add_bos=False)
    assert [tok.token_text(i) for i in ids] == [f"<0x{b:02X}>" for b in rare.encode()]
    assert tok.decode(ids) == rare


def _variant(src: Path, dst: Path, **overrides) -> Path:
    """A copy of a vocab-only GGUF with some tokenizer.ggml.* keys replaced (None: removed)."""
    with GGUFFile(src) as g:
        kvs = dict(g.kv)
    for name, v in overrides.items():
        key = "tokenizer.ggml." + name
        if v is None:
            del kvs[key]
        elif isinstance(v, np.ndarray):
            kvs[key] = KV(key, GGUFValueType.ARRAY, v.astype(np.int32), GGUFValueType.INT32)
        elif isinstance(v, bool):
            kvs[key] = KV(key, GGUFValueType.BOOL, v)
        elif isinstance(v, list):
            kvs[key] = KV(key, GGUFValueType.ARRAY, v, GGUFValueType.STRING)
        else:
            kvs[key] = KV(key, GGUFValueType.STRING, v)
    dst.write_bytes(encode_header(list(kvs.values()), []))
    return dst


def test_variants_match_llama_cpp(request, root):
    """Pre-tokenizers without a fixture of their own (default, llama-bpe, starcoder), user-defined tokens (matched
    even without parse_special, always rendered), SentencePiece without the space prefix, and Gemma 4 without the
    merges that join newlines (a run of newlines is still its token, as in llama.cpp)."""
    gpt2 = _model(request, root, "gpt2")
    qwen = _model(request, root, "qwen2")
    llama = _model(request, root, "llama")
    gemma = _model(request, root, "gemma-4")
    with GGUFFile(gemma.gguf) as g:
        merges = [m for m in g.value("tokenizer.ggml.merges") if m.strip("\n ")]
    with GGUFFile(qwen.gguf) as g:
        types = np.array(g.value("tokenizer.ggml.token_type"))
    types[qwen.tok.token_to_id["<|im_start|>"]] = 4
    types[qwen.tok.token_to_id["name"]] = 4
    cases = [_variant(gpt2.gguf, root / f"v-{pre}.gguf", pre=pre) for pre in ("default", "llama-bpe", "starcoder")]
    cases.append(_variant(qwen.gguf, root / "v-user.gguf", token_type=types))
    cases.append(_variant(llama.gguf, root / "v-noprefix.gguf", add_space_prefix=False))
    cases.append(_variant(gemma.gguf, root / "v-gemma4-newlines.gguf", merges=merges))
    corpus = tokenizer_corpus(600, seed=3, specials=["<|endoftext|>", "<|im_start|>", "name", "</s>"])
    for path in cases:
        tok, llm = _both(path)
        bad = []
        for s in corpus:
            bad += _encode_mismatches(tok, llm, s)
            for ps in (True, False):
                ids = tok.encode(s, add_bos=False, parse_special=ps)
                if not (ids and ids[0] == tok.bos_id):
                    for special in (True, False):
                        if not tok.add_space_prefix and tok.decode(ids, not special) != _detokenize(llm, ids, special):
                            bad.append(("decode", special, s))
        assert not bad, f"{path.name}: {len(bad)} mismatches, first {bad[:5]!r}"


def _both(path: Path):
    """A vocabulary file as our tokenizer and as llama.cpp's."""
    with GGUFFile(path) as g:
        tok = Tokenizer.from_gguf(g)
    return tok, _llama(path)


def _encode_mismatches(tok, llm, s: str) -> list:
    """(parse_special, s) for each way of parsing special tokens in which our ids differ from llama.cpp's."""
    return [(ps, s) for ps in (True, False)
            if tok.encode(s, add_bos=False, parse_special=ps) != llm.tokenize(s.encode(), add_bos=False, special=ps)]


def test_unsupported_vocabularies_are_refused():
    with pytest.raises(UnsupportedTokenizer, match="pre-tokenizer"):
        Tokenizer(model="gpt2", tokens=["a", "b"], merges=[], pre="no-such-pre")
    for model in ("rwkv", "no-such-model"):  # llama.cpp's RWKV model is not implemented
        with pytest.raises(UnsupportedTokenizer, match=f"tokenizer model '{model}' is not supported"):
            Tokenizer(model=model, tokens=["a", "b"])


def test_encode_is_fast(any_model):
    """No pathological encoder (e.g. quadratic in a word's length): 10 kB in well under a second of CPU time (the
    process's own time, so that a busy machine does not fail it; some 20 ms here)."""
    model = any_model
    text = "\n".join(tokenizer_corpus(400, seed=5))[:10_000]
    tok = model.tok
    best = float("inf")
    for _ in range(3):
        tok._cache.clear()  # cold: no pre-token seen before
        t0 = time.process_time()
        tok.encode(text)
        best = min(best, time.process_time() - t0)
    assert best < 0.5, f"{model.arch}: {best * 1e3:.0f} ms of CPU for 10 kB"


def test_import_does_not_pull_torch_or_transformers():
    code = ("import sys, runtime.tokenizer; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'tokenizers', "
            "'sentencepiece', 'llama_cpp')]; print(heavy); sys.exit(1 if heavy else 0)")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------ llama.cpp's test set

def _vocab_cases():
    from tests.conftest import SHARED
    folder = SHARED / "llama-vocab"
    names = sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in folder.glob("ggml-vocab-*.gguf.inp"))
    return names or ["(missing)"]


@pytest.mark.parametrize("name", _vocab_cases())
def test_llama_cpp_vocab_test_set(shared_fixtures, name):
    """llama.cpp's own tokenizer test vectors (models/ggml-vocab-*.gguf with .inp/.out: add_special and parse_special
    off): every string gives llama.cpp's ids."""
    base = shared_fixtures / "llama-vocab" / f"ggml-vocab-{name}.gguf"
    texts = Path(f"{base}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = Path(f"{base}.out").read_text(encoding="utf-8").split("\n")
    with GGUFFile(base) as g:
        tok = Tokenizer.from_gguf(g)
    bad = [(t, want) for t, want in zip(texts, expected)
           if tok.encode(t, add_bos=False, parse_special=False) != [int(x) for x in want.split()]]
    assert len(texts) >= 40 and not bad, f"{len(bad)} of {len(texts)} differ, first {bad[:1]!r}"
