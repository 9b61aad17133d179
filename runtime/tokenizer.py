"""Runtime tokenizer built from GGUF metadata alone, token-for-token equal to llama.cpp's tokenizer.

Five vocabulary kinds (``tokenizer.ggml.model``) are supported:

* ``"gpt2"``: byte-level BPE. The text is split by the pre-tokenizer regexes of ``tokenizer.ggml.pre`` (applied one
  after the other, each to the pieces of the previous one, as llama.cpp does), every piece is mapped to the GPT-2 byte
  alphabet and merged by rank (lowest rank first, leftmost first on ties).
* ``"gemma4"``: BPE over the raw UTF-8 text (no byte alphabet): spaces become ``▁``, the text is split only into runs
  of newlines and runs of other characters, each run is merged by rank; characters that end up as no token fall back
  to ``<0xXX>`` byte tokens.
* ``"llama"``: SentencePiece as llama.cpp runs it: a space is prepended to each text fragment that starts the text or
  follows a special token (``add_space_prefix``, default true), spaces become ``▁``, then adjacent symbols are merged
  greedily by vocabulary score; characters that end up as no token fall back to ``<0xXX>`` byte tokens.
* ``"bert"``: WordPiece (llama.cpp's WPM): the text is lower-cased and stripped of accents (BERT's normalizer), split
  at whitespace, punctuation and CJK ideographs, and each word, prefixed with ``▁``, is cut into the longest tokens
  from the left; a word that cannot be cut becomes the unknown token. (The GGUF stores word-initial pieces as
  ``▁piece`` and BERT's ``##piece`` continuations as ``piece``.) With ``add_bos`` the ids are framed by [CLS] ... [SEP].
* ``"t5"``: Unigram (llama.cpp's UGM; T5, XLM-RoBERTa): the text is normalized by SentencePiece's precompiled
  character map (``tokenizer.ggml.precompiled_charsmap``), spaces become ``▁`` (runs of them merged with
  ``remove_extra_whitespaces``, one prepended with ``add_space_prefix``), and the tokenization with the highest total
  token score is found by a Viterbi search; characters no token covers become the unknown token (a run of them one).

Special tokens (control, user-defined, unknown) written in the text are matched first, longest first, and the text is
split around them (``parse_special``; user-defined tokens are matched even without it, as in llama.cpp).

Only numpy, the ``regex`` module and the standard library are used: importing this module never imports torch,
transformers or sentencepiece.
"""

from __future__ import annotations

import codecs
import heapq
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import regex

from common.errors import UserError
from common.textfile import require_utf8

if TYPE_CHECKING:  # pragma: no cover
    from common.ggufio import GGUFFile

__all__ = ["Tokenizer", "StreamDecoder", "UnsupportedTokenizer"]


class UnsupportedTokenizer(UserError, ValueError):
    """The GGUF's tokenizer (its model, pre-tokenizer or special ids) is not one this runtime can use: a user's
    error (one line), still a ValueError for the callers that catch that."""


# token attributes (llama.cpp's llama_token_attr bits)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

# tokenizer.ggml.token_type values → attributes
_TYPE_ATTR = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED, 6: ATTR_BYTE}

SPM_SPACE = "\u2581"  # ▁

# ----------------------------------------------------------------------------------------------------------------------
# pre-tokenizer regexes
# ----------------------------------------------------------------------------------------------------------------------
# llama.cpp classifies code points with its own tables; its "whitespace" is this fixed set (note: not \x1c-\x1f, which
# Python's \s includes). Letters and numbers are the Unicode categories L* and N*.
_WS = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_S = f"[{_WS}]"          # \s
_NS = f"[^{_WS}]"        # \S
_OTHER = f"[^{_WS}\\p{{L}}\\p{{N}}]"  # [^\s\p{L}\p{N}]

# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
_GPT2 = (f"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{{L}}+| ?\\p{{N}}+| ?{_OTHER}+|{_S}+(?!{_NS})|{_S}+")
# llama.cpp's case-insensitive contractions are ASCII-only ([sS] ...), unlike a (?i:...) group
_CONTRACTIONS_CI = "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"


def _qwen_like(numbers: str) -> str:
    # (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|<numbers>| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    return (f"(?:{_CONTRACTIONS_CI})|[^\\r\\n\\p{{L}}\\p{{N}}]?\\p{{L}}+|{numbers}| ?{_OTHER}+[\\r\\n]*"
            f"|{_S}*[\\r\\n]+|{_S}+(?!{_NS})|{_S}+")


_QWEN2 = _qwen_like("\\p{N}")
_LLAMA3 = _qwen_like("\\p{N}{1,3}")
# Qwen3.5: letters with their combining marks, [\p{L}\p{M}], in place of \p{L}
_QWEN35 = (f"(?:{_CONTRACTIONS_CI})|[^\\r\\n\\p{{L}}\\p{{N}}]?[\\p{{L}}\\p{{M}}]+|\\p{{N}}"
           f"| ?[^{_WS}\\p{{L}}\\p{{M}}\\p{{N}}]+[\\r\\n]*|{_S}*[\\r\\n]+|{_S}+(?!{_NS})|{_S}+")
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"  # CJK ideographs, kana and more, Hangul syllables
# DeepSeek-LLM's letters and punctuation are explicit ranges in llama.cpp (llama-vocab.cpp), not Unicode categories
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943")
_DEEPSEEK_PUNCT = "!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002"


class _PreTokenizer(NamedTuple):
    """How a BPE vocabulary cuts the text into words before merging (llama.cpp's llm_tokenizer_bpe settings)."""
    regexes: tuple[str, ...]       # applied one after the other, each to the pieces of the previous one
    ignore_merges: bool = False    # a word that is a token is that token, whatever the merges say
    byte_level: bool = True        # words are written in the GPT-2 byte alphabet; else raw text, <0xXX> byte tokens
    escape_spaces: bool = False    # spaces are written as ▁ (in the tokens too: decoding turns ▁ back into spaces)
    newline_runs: bool = False     # a word of newlines only is one token when the vocabulary has it (Gemma 4)


# pre-tokenizer family → its settings
_PRE_FAMILIES: dict[str, _PreTokenizer] = {
    "default": _PreTokenizer(("[\\p{P}$+<=>^~|]+", _GPT2, "\\p{N}+", "[0-9][0-9][0-9]")),
    "gpt2": _PreTokenizer((_GPT2,)),
    "codeshell": _PreTokenizer(("\\p{N}", _GPT2)),   # also starcoder, refact, command-r, smollm, ...
    "qwen2": _PreTokenizer((_QWEN2,)),
    "llama3": _PreTokenizer((_LLAMA3,), ignore_merges=True),
    "qwen35": _PreTokenizer((_QWEN35,)),
    "deepseek-coder": _PreTokenizer(("[\\r\\n]", f"{_S}?\\p{{L}}+", f"{_S}?\\p{{P}}+", _CJK, "\\p{N}")),
    "deepseek-llm": _PreTokenizer(("[\\r\\n]", f"{_S}?[{_DEEPSEEK_LETTERS}]+", f"{_S}?[{_DEEPSEEK_PUNCT}]+",
                                   f"{_S}+\\Z", _CJK, "\\p{N}+")),
    "falcon": _PreTokenizer(("[\\p{P}$+<=>^~|`]+",
                             f"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{{L}}+| ?\\p{{N}}+| ?{_OTHER}+|{_S}+(?!{_NS})",
                             "[0-9][0-9][0-9]")),
    # SentencePiece-style BPE: whole lines are merged, newlines apart
    "gemma4": _PreTokenizer(("[^\\n]+|[\\n]+",), byte_level=False, escape_spaces=True, newline_runs=True),
}

# tokenizer.ggml.pre → family (the names llama.cpp maps to the same regexes)
_PRE_NAMES: dict[str, str] = {
    "default": "default",
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                     "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4", "mpt", "olmo",
                     "jais", "trillion", "granite-docling"), "gpt2"),
    **dict.fromkeys(("codeshell", "starcoder", "refact", "command-r", "smollm", "exaone", "minerva-7b", "mellum2"),
                    "codeshell"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
                     "solar-open"), "qwen2"),
    "qwen35": "qwen35", "deepseek-coder": "deepseek-coder", "deepseek-llm": "deepseek-llm", "falcon": "falcon",
    "gemma4": "gemma4", "granite-embed-multi-311m": "gemma4",
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"), "llama3"),
}

# ----------------------------------------------------------------------------------------------------------------------
# special-token detection by text (llama.cpp marks these control / end-of-generation even when the GGUF does not)
# ----------------------------------------------------------------------------------------------------------------------
_EOT_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_NAMES = ("<|eom_id|>",)
_FIM_NAMES = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_NAMES = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
))

# ----------------------------------------------------------------------------------------------------------------------
# GPT-2 byte-level alphabet
# ----------------------------------------------------------------------------------------------------------------------


def _byte_alphabet() -> list[str]:
    """byte → the printable character GPT-2's byte-level BPE writes for it."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out = [""] * 256
    for b in keep:
        out[b] = chr(b)
    n = 0
    for b in range(256):
        if not out[b]:
            out[b] = chr(256 + n)
            n += 1
    return out


_BYTE_TO_CHAR = _byte_alphabet()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}
_LATIN1_TO_BYTELEVEL = {b: c for b, c in enumerate(_BYTE_TO_CHAR)}  # str.translate table on latin-1 decoded bytes


def _raw(text: str) -> bytes:
    """A token text's original bytes (the GGUF reader decodes strings with surrogateescape)."""
    return text.encode("utf-8", "surrogateescape")


def _hex_byte(text: str) -> int:
    """The byte of a ``<0xXX>`` token (llama.cpp: strtol on characters 3..4; garbage gives 0)."""
    try:
        return int(text[3:5], 16) & 0xFF
    except ValueError:
        return 0


# ----------------------------------------------------------------------------------------------------------------------
# WordPiece (tokenizer.ggml.model == "bert"; llama.cpp's WPM)
# ----------------------------------------------------------------------------------------------------------------------
# llama.cpp's whitespace (its own fixed set, see _WS) ends a word; other control and format characters are dropped
_WPM_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                       + "".join(map(chr, range(0x2000, 0x200B))))
_WPM_DROP = regex.compile("[\\x00\ufffd\\p{Cc}\\p{Cf}\\p{Co}\\p{Cs}]")
_WPM_MARK = regex.compile("\\p{M}")
_WPM_ALONE = regex.compile("\\p{P}|[\\x00-\\x7e&&\\p{S}]", regex.V1)  # punctuation; ASCII symbols
# the CJK ideograph blocks BERT splits into one-character words (as in llama.cpp and HF, 0x2B920 not 0x2B820)
_WPM_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
            (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

# what a character does to the word being built
_WPM_BREAK, _WPM_SKIP, _WPM_SINGLE, _WPM_APPEND = range(4)


def _simple_lower(c: str) -> str:
    """The one-character lower case of c (Unicode's simple mapping, as llama.cpp's table: İ → i)."""
    low = c.lower()
    return low if len(low) == 1 else low[0]


def _is_cjk(c: str) -> bool:
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in _WPM_CJK)


class _WordPiece:
    """llama.cpp's WPM tokenizer: BERT's normalization and word split, then greedy longest-match from the left.

    The normalization is llama.cpp's, not HF's: "stripping accents" replaces each character by the first character of
    its canonical decomposition (é → e, 한 → ᄒ) and drops combining marks; \\x1c-\\x1f are control characters
    (dropped), not spaces.
    """

    def __init__(self, tokens: list[str], unk_id: int | None, lowercase: bool, strip_accents: bool):
        self.unk_id = unk_id
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.vocab: dict[bytes, int] = {_raw(t): i for i, t in enumerate(tokens)}  # later duplicates win
        self.max_len = max((len(b) for b in self.vocab), default=0)  # in bytes, as llama.cpp
        self._chars: dict[str, tuple[int, str]] = {}

    def split(self, text: str) -> list[str]:
        """The normalized words of the text: whitespace ends a word, punctuation and CJK ideographs are words alone."""
        words: list[str] = []
        word: list[str] = []
        for c in text:
            action, s = self._char(c)
            if action == _WPM_APPEND:
                word.append(s)
            elif action != _WPM_SKIP:
                if word:
                    words.append("".join(word))
                    word = []
                if action == _WPM_SINGLE:
                    words.append(s)
        if word:
            words.append("".join(word))
        return words

    def _char(self, c: str) -> tuple[int, str]:
        """What the character does (one of _WPM_BREAK/SKIP/SINGLE/APPEND) and its normalized text (cached)."""
        got = self._chars.get(c)
        if got is None:
            got = self._chars[c] = self._classify(c)
        return got

    def _classify(self, c: str) -> tuple[int, str]:
        if self.strip_accents:
            c = unicodedata.normalize("NFD", c)[0]
        if c in _WPM_SPACE:
            return _WPM_BREAK, ""
        if _WPM_DROP.match(c) or (self.strip_accents and _WPM_MARK.match(c)):
            return _WPM_SKIP, ""
        s = _simple_lower(c) if self.lowercase else c
        if _WPM_ALONE.match(c) or _is_cjk(c):
            return _WPM_SINGLE, s
        return _WPM_APPEND, s

    def word_ids(self, word: str) -> tuple[int, ...]:
        """▁word cut into the longest tokens from the left (on bytes, as llama.cpp); the unknown token when some
        position starts no token."""
        data = _raw(SPM_SPACE + word)
        vocab, n = self.vocab, len(data)
        ids: list[int] = []
        i = 0
        while i < n:
            for j in range(min(n, i + self.max_len + 1), i, -1):
                tid = vocab.get(data[i:j])
                if tid is not None:
                    ids.append(tid)
                    i = j
                    break
            else:
                if self.unk_id is None:
                    raise ValueError(f"no token for {word!r} and no unknown token")
                return (self.unk_id,)
        return tuple(ids)


# ----------------------------------------------------------------------------------------------------------------------
# Unigram (tokenizer.ggml.model == "t5"; llama.cpp's UGM)
# ----------------------------------------------------------------------------------------------------------------------
_UGM_SPACE = SPM_SPACE.encode()  # spaces are always escaped as ▁ (llama.cpp: escape_whitespaces)
_UGM_REPLACEMENT = "\ufffd".encode()  # what a byte that starts no valid UTF-8 sequence becomes
_UGM_UNKNOWN_PENALTY = 10.0  # the unknown token scores this much below the lowest normal token
_UGM_NO_SCORE = -sys.float_info.max  # a position not reached yet
_UTF8_LEAD_LEN = (1,) * 12 + (2, 2, 3, 4)  # a sequence's length by its first byte's high nibble, unchecked
# per character of a text, the tokens the search can take there: (index of the character after it, id, score)
_Edges = tuple[tuple[tuple[int, int, float], ...], ...]


def _utf8_steps(data: bytes) -> list[int]:
    """The byte offsets llama.cpp's Unigram search moves through: one character on, by its first byte alone (clipped
    at the end), starting at 0 and ending at len(data)."""
    bounds = [0]
    i, n = 0, len(data)
    while i < n:
        i = min(i + _UTF8_LEAD_LEN[data[i] >> 4], n)
        bounds.append(i)
    return bounds


def _utf8_sequence_len(data: bytes, i: int) -> int:
    """The length of the valid UTF-8 sequence at data[i] (lead byte and continuation bytes checked only, as llama.cpp's
    unicode_cpt_from_utf8), 0 when there is none."""
    b = data[i]
    if b < 0x80:
        return 1
    if b < 0xC0 or b >= 0xF8:
        return 0
    n = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
    if i + n > len(data) or any(c & 0xC0 != 0x80 for c in data[i + 1:i + n]):
        return 0
    return n


class _CharsMap:
    """SentencePiece's precompiled normalization map (``tokenizer.ggml.precompiled_charsmap``): a little-endian uint32
    blob size, an XOR-compressed compact double array (XCDA) trie over byte strings, then NUL-terminated replacement
    strings. Each entry packs BASE (bits 10-30, shifted left by 8 when bit 9 is set), the LEAF flag (bit 8) and LCHECK
    (the byte label, bits 0-7; bit 31 marks an entry holding a replacement offset)."""

    def __init__(self, blob: bytes):
        if len(blob) < 4:
            raise ValueError("precompiled_charsmap too small for its size header")
        size = int.from_bytes(blob[:4], "little")
        if size + 4 >= len(blob):
            raise ValueError("precompiled_charsmap: the trie overruns the map")
        self.nodes: list[int] = np.frombuffer(blob, dtype="<u4", count=size // 4, offset=4).tolist()
        self.strings = blob[4 + size:]
        self._replacements: dict[int, bytes] = {}  # by offset, once read

    def longest_match(self, data: bytes, start: int) -> tuple[int, bytes]:
        """The longest key that data[start:] begins with: (its length in bytes, its replacement); (0, b"") for none.
        A NUL byte ends the search."""
        nodes = self.nodes
        length = offset = 0
        try:
            node = nodes[0]
            index = (node >> 10) << ((node & 0x200) >> 6)  # the root's BASE
            for pos in range(start, len(data)):
                c = data[pos]
                if c == 0:
                    break
                index ^= c
                node = nodes[index]
                if node & 0x800000FF != c:  # LCHECK: no child labelled c
                    break
                index ^= (node >> 10) << ((node & 0x200) >> 6)
                if node & 0x100:  # LEAF: the node at BASE holds the replacement's offset
                    length = pos - start + 1
                    offset = nodes[index] & 0x7FFFFFFF
        except IndexError:
            raise ValueError("precompiled_charsmap: trie index out of bounds") from None
        if not length:
            return 0, b""
        return length, self._replacement(offset)

    def _replacement(self, offset: int) -> bytes:
        got = self._replacements.get(offset)
        if got is None:
            end = self.strings.find(b"\0", offset)
            if offset >= len(self.strings) or end < 0:
                raise ValueError("precompiled_charsmap: replacement string out of bounds or unterminated")
            got = self._replacements[offset] = self.strings[offset:end]
        return got


class _Unigram:
    """llama.cpp's UGM tokenizer (T5, XLM-RoBERTa): SentencePiece normalization, then the Viterbi search for the
    tokenization with the highest total score.

    Normalization, on the UTF-8 bytes: at each position, a prefix that follows a path of the user-defined token trie
    is kept as is (llama.cpp keeps the deepest path walked, a whole token or not), else the longest key of the
    precompiled charsmap is replaced, else one valid UTF-8 character is kept, else one byte becomes U+FFFD. Then spaces
    become ``▁``: with ``remove_extra_whitespaces`` every run of non-spaces is prefixed by one ``▁`` and the spaces
    themselves are dropped; otherwise each space is a ``▁`` and ``add_space_prefix`` puts one more before the first
    non-space.

    Viterbi, moving one character at a time: every normal, user-defined or unused token that starts at the position
    extends the best tokenization there by its score (user-defined tokens score 0); when no token is exactly the
    character, the unknown token covers it with the lowest normal score minus 10. Runs of unknown tokens in the result
    become one.
    """

    def __init__(self, tokens: list[bytes], type_attrs: list[int], attrs: list[int], scores: list[float],
                 unk_id: int | None, charsmap: bytes | None, add_space_prefix: bool, remove_extra_whitespaces: bool,
                 cache: dict):
        """``type_attrs``: the attributes of the GGUF's token types, which choose the tokens the search uses (llama.cpp
        builds its tries before it marks special tokens by name); ``attrs``: the final ones (user-defined tokens
        score 0). ``cache``: where the edges of words are kept (the Tokenizer's cache)."""
        self.unk = -1 if unk_id is None else unk_id  # llama.cpp's "no token" when the vocabulary has no unknown token
        self.add_space_prefix = add_space_prefix
        self.merge_spaces = remove_extra_whitespaces
        self.charsmap = _CharsMap(charsmap) if charsmap else None
        self.cache: dict[bytes, _Edges] = cache
        self._index_tokens(tokens, type_attrs, attrs, scores)
        normal = [s for s, a in zip(scores, type_attrs) if a & ATTR_NORMAL]
        lowest = np.float32(min(normal) if normal else np.finfo(np.float32).max)
        self.unknown_score = float(lowest - np.float32(_UGM_UNKNOWN_PENALTY))  # in float32, as llama.cpp
        # every prefix of a user-defined token (their trie's paths) and the bytes they start with
        user = [t for i, t in enumerate(tokens) if type_attrs[i] & ATTR_USER_DEFINED]
        self.user_paths = frozenset(t[:k] for t in user for k in range(1, len(t) + 1))
        self.user_first = frozenset(t[0] for t in user)

    def _index_tokens(self, tokens: list[bytes], type_attrs: list[int], attrs: list[int], scores: list[float]) -> None:
        """The normal, user-defined and unused tokens (later duplicates win) with their ids and scores; per first
        character, the most characters such a token has; whether a ▁ ever follows a token's start."""
        usable = ATTR_NORMAL | ATTR_USER_DEFINED | ATTR_UNUSED
        ids = {t: i for i, t in enumerate(tokens) if type_attrs[i] & usable}
        self.vocab: dict[bytes, tuple[int, float]] = {
            t: (i, 0.0 if attrs[i] & ATTR_USER_DEFINED else scores[i]) for t, i in ids.items()}
        self.max_chars: dict[bytes, int] = {}
        for t in self.vocab:
            bounds = _utf8_steps(t)
            first = t[:bounds[1]]
            self.max_chars[first] = max(self.max_chars.get(first, 0), len(bounds) - 1)
        self.split_words = not any(t.find(_UGM_SPACE, 1) >= 0 for t in self.vocab)

    # -- normalization ---------------------------------------------------------------------------------------------
    def normalize(self, text: str) -> bytes:
        """The text as the search sees it: normalized UTF-8 with spaces escaped as ▁."""
        data = _raw(text)
        out: list[bytes] = []
        kept = 0  # data[kept:i] is kept as is, not yet copied
        i = 0
        while i < len(data):
            replacement, used = self._normalize_prefix(data, i)
            if replacement is not None:
                out.append(data[kept:i])
                out.append(replacement)
                kept = i + used
            i += used
        out.append(data[kept:])
        return self._place_spaces(b"".join(out))

    def _normalize_prefix(self, data: bytes, i: int) -> tuple[bytes | None, int]:
        """How data[i:] begins normalized: (replacement, bytes consumed); replacement None keeps those bytes."""
        if data[i] in self.user_first:
            end = i + 1
            while end < len(data) and data[i:end + 1] in self.user_paths:
                end += 1
            return None, end - i
        if self.charsmap is not None:
            length, replacement = self.charsmap.longest_match(data, i)
            if length:
                return replacement, length
        n = _utf8_sequence_len(data, i)
        return (None, n) if n else (_UGM_REPLACEMENT, 1)

    def _place_spaces(self, data: bytes) -> bytes:
        if self.merge_spaces:
            return b"".join(_UGM_SPACE + word for word in data.split(b" ") if word)
        rest = data.lstrip(b" ")
        prefix = _UGM_SPACE if self.add_space_prefix and rest else b""
        return _UGM_SPACE * (len(data) - len(rest)) + prefix + rest.replace(b" ", _UGM_SPACE)

    # -- search ----------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """The ids of the best tokenization of the normalized text."""
        data = self.normalize(text)
        if not data:
            return []
        return self._best_path([self._word_edges(w) for w in self._words(data)])

    def _words(self, data: bytes) -> list[bytes]:
        """The text cut before each ▁ when no token holds a ▁ after its start: every tokenization then has a token
        boundary there, so the words can be searched apart (and their tokens cached). Text that is not valid UTF-8 is
        not cut: the search's steps of one character could straddle a ▁."""
        if not self.split_words:
            return [data]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return [data]
        head, *rest = data.split(_UGM_SPACE)
        words = [_UGM_SPACE + w for w in rest]
        if head:
            words.insert(0, head)
        return words

    def _word_edges(self, word: bytes) -> _Edges:
        got = self.cache.get(word)
        if got is None:
            if len(self.cache) >= 200_000:
                self.cache.clear()
            got = self.cache[word] = self._edges(word)
        return got

    def _edges(self, data: bytes) -> _Edges:
        """For each character of data, the tokens that start there, shortest first, as (index of the character after
        the token, id, score); then the unknown token, covering the character, when no token is that character
        alone."""
        bounds = _utf8_steps(data)
        out = []
        for k in range(len(bounds) - 1):
            found = list(self._matches(data, bounds, k))
            if not found or found[0][0] != k + 1:
                found.append((k + 1, self.unk, self.unknown_score))
            out.append(tuple(found))
        return tuple(out)

    def _matches(self, data: bytes, bounds: list[int], k: int) -> Iterator[tuple[int, int, float]]:
        """The tokens data[bounds[k]:] begins with, shortest first: (index of the character after it, id, score)."""
        begin = bounds[k]
        longest = self.max_chars.get(data[begin:bounds[k + 1]], 0)
        vocab = self.vocab
        for end in range(k + 1, min(k + longest + 1, len(bounds))):
            got = vocab.get(data[begin:bounds[end]])
            if got is not None:
                yield end, got[0], got[1]

    def _best_path(self, words: list[_Edges]) -> list[int]:
        """Viterbi over the characters of the words in order: the tokenization with the highest total score (ties: the
        first found, as llama.cpp), a run of unknown tokens as one."""
        n = sum(map(len, words)) + 1
        best = [_UGM_NO_SCORE] * n  # the best score of a tokenization of the first k characters
        last = [self.unk] * n       # its last token
        start = [0] * n             # the character index where that token starts
        best[0] = 0.0
        k = 0
        for edges in words:
            first = k
            for char_edges in edges:
                base = best[k]
                for end, tid, score in char_edges:
                    end += first
                    s = base + score
                    if s > best[end]:
                        best[end], last[end], start[end] = s, tid, k
                k += 1
        return self._backtrack(last, start)

    def _backtrack(self, last: list[int], start: list[int]) -> list[int]:
        """The tokens of the best tokenization, from its end back, a run of unknown tokens as one."""
        unk = self.unk
        ids: list[int] = []
        k = len(last) - 1
        while k > 0:
            tid = last[k]
            if not (tid == unk and ids and ids[-1] == unk):
                ids.append(tid)
            k = start[k]
        if unk == -1 and -1 in ids:
            raise ValueError("the text needs the unknown token and the vocabulary has none")
        ids.reverse()
        return ids


# tokenizer.ggml.model → llama.cpp's default special ids (bos, eos, unk, sep, pad) when the GGUF names none
_MODEL_DEFAULT_IDS: dict[str, tuple[int | None, ...]] = {
    "llama": (1, 2, 0, None, None),
    "bert": (101, None, 100, 102, 0),
    "gpt2": (11, 11, None, None, None),
    "gemma4": (None, None, None, None, None),
    "t5": (None, 1, 2, None, 0),
}


class _ModelFlags(NamedTuple):
    """llama.cpp's defaults for a tokenizer model when the GGUF does not say (tokenizer.ggml.add_*)."""
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False


_MODEL_DEFAULT_FLAGS: dict[str, _ModelFlags] = {
    "llama": _ModelFlags(add_bos=True, add_space_prefix=True),
    "bert": _ModelFlags(add_bos=True),
    "gpt2": _ModelFlags(),
    "gemma4": _ModelFlags(),
    "t5": _ModelFlags(add_eos=True),
}


class Tokenizer:
    """llama.cpp-compatible tokenizer for byte-level BPE ("gpt2"), raw-text BPE ("gemma4"), SentencePiece ("llama"),
    WordPiece ("bert") and Unigram ("t5") GGUF vocabularies."""

    def __init__(self, *, model: str, tokens: list[str], token_types: Iterable[int] | None = None,
                 scores: Iterable[float] | None = None, merges: Iterable[str] | None = None, pre: str | None = None,
                 bos_id: int | None = None, eos_id: int | None = None, unk_id: int | None = None,
                 pad_id: int | None = None, sep_id: int | None = None, add_bos: bool | None = None,
                 add_eos: bool | None = None, add_space_prefix: bool | None = None,
                 special_ids: dict[str, int] | None = None, lowercase: bool | None = None,
                 strip_accents: bool | None = None, charsmap: bytes | None = None,
                 remove_extra_whitespaces: bool | None = None):
        if model not in _MODEL_DEFAULT_IDS:
            raise UnsupportedTokenizer(f"tokenizer model {model!r} is not supported (supported: 'gpt2' byte-level BPE, "
                                       f"'gemma4' BPE, 'llama' SentencePiece, 'bert' WordPiece, 't5' Unigram)")
        self.model = model
        self.is_spm = model == "llama"
        self.is_wpm = model == "bert"
        self.is_ugm = model == "t5"
        n = len(tokens)
        self.n_vocab = n
        # token texts; llama.cpp replaces empty ones so that every text is unique-ish and non-empty
        self.tokens: list[str] = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}  # later duplicates win
        types = [1] * n if token_types is None else [int(x) for x in token_types]
        if len(types) < n:
            raise ValueError(f"token_type has {len(types)} entries for {n} tokens")
        self.attrs: list[int] = [_TYPE_ATTR.get(t, ATTR_UNDEFINED) for t in types[:n]]
        if scores is None:
            self.scores = [0.0] * n
        else:
            self.scores = [float(x) for x in scores][:n]
            if len(self.scores) < n:
                raise ValueError(f"scores has {len(self.scores)} entries for {n} tokens")

        def _valid(given, default):
            """The id given, else (none, or out of range: llama.cpp warns "bad special token") the default."""
            for i in (given, default):
                if i is not None and 0 <= int(i) < n:
                    return int(i)
            return None

        d_bos, d_eos, d_unk, d_sep, d_pad = _MODEL_DEFAULT_IDS[model]
        self.bos_id: int | None = _valid(bos_id, d_bos)
        self.eos_id: int | None = _valid(eos_id, d_eos)
        self.unk_id: int | None = _valid(unk_id, d_unk)
        self.sep_id: int | None = _valid(sep_id, d_sep)
        self.pad_id: int | None = _valid(pad_id, d_pad)
        flags = _MODEL_DEFAULT_FLAGS[model]
        self.add_bos: bool = bool(flags.add_bos if add_bos is None else add_bos)
        self.add_eos: bool = bool(flags.add_eos if add_eos is None else add_eos)
        self.add_space_prefix: bool = bool(flags.add_space_prefix if add_space_prefix is None else add_space_prefix)

        type_attrs = list(self.attrs)  # before the special tokens found by name are marked
        self._init_special(dict(special_ids or {}))
        # per pre-token: its ids (BPE, SentencePiece, WordPiece); per ▁-word: its search edges (Unigram)
        self._cache: dict = {}

        self.pre: str | None = None
        self._pre = _PreTokenizer(())
        if self.is_spm:
            self._init_spm()
        elif self.is_wpm:
            low = True if lowercase is None else bool(lowercase)
            self._wpm = _WordPiece(self.tokens, self.unk_id, low, low if strip_accents is None else bool(strip_accents))
        elif self.is_ugm:
            self._ugm = _Unigram([_raw(t) for t in self.tokens], type_attrs, self.attrs, self.scores, self.unk_id,
                                 charsmap, self.add_space_prefix, bool(remove_extra_whitespaces), self._cache)
        else:
            self._init_bpe("gemma4" if model == "gemma4" else pre or "default", merges)
        # spaces are stored as ▁ in the tokens
        self._escaped_spaces = self.is_spm or self.is_wpm or self.is_ugm or self._pre.escape_spaces
        self._pieces: dict[tuple[int, bool], bytes] = {}

    def _init_spm(self) -> None:
        # adjacent character pairs occurring inside any token: a boundary between two characters that form no such
        # pair can never be merged across, so the text can be cut there and the pieces cached
        pairs = set()
        for t in self.token_to_id:
            for k in range(len(t) - 1):
                pairs.add(t[k:k + 2])
        self._spm_pairs = frozenset(pairs)
        self._byte_ids: list[int | None] = []
        for b in range(256):
            tid = self.token_to_id.get(f"<0x{b:02X}>")
            if tid is None:
                tid = self.token_to_id.get(chr(b) if b < 0x80 else chr(0xDC00 + b))
            if tid is None:
                tid = self.unk_id
            self._byte_ids.append(tid)

    def _init_bpe(self, name: str, merges: Iterable[str] | None) -> None:
        family = _PRE_NAMES.get(name)
        if family is None:
            raise UnsupportedTokenizer(f"pre-tokenizer {name!r} is not supported; supported: "
                                       f"{', '.join(sorted(_PRE_NAMES))}")
        self.pre = name
        self._pre = _PRE_FAMILIES[family]
        self._stages = [regex.compile(r) for r in self._pre.regexes]
        if self._pre.newline_runs and not self.add_bos:
            self.add_bos = True  # llama.cpp always adds BOS for Gemma 4
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, m in enumerate(merges or ()):
            pos = m.find(" ", 1)
            first, second = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
            self._ranks.setdefault((first, second), rank)  # the first occurrence wins (std::map::emplace)
        # a symbol that is no token is written as the tokens of its bytes (any missing one is dropped)
        if self._pre.byte_level:  # the byte's own one-character token (the GGUF reader keeps bytes ≥ 0x80 escaped)
            texts = [chr(b) if b < 0x80 else chr(0xDC00 + b) for b in range(256)]
        else:
            texts = [f"<0x{b:02X}>" for b in range(256)]
        self._byte_fallback: list[int | None] = [self.token_to_id.get(t) for t in texts]

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, g: "GGUFFile") -> "Tokenizer":
        tokens = g.value("tokenizer.ggml.tokens")
        if tokens is None:
            raise UnsupportedTokenizer(f"{getattr(g, 'path', 'GGUF')} has no tokenizer (tokenizer.ggml.tokens)")
        model = g.value("tokenizer.ggml.model", "llama")

        def _id(key: str) -> int | None:
            """A special token id: an integer (its range is checked against the vocabulary later), or None."""
            v = g.value(f"tokenizer.ggml.{key}_token_id")
            v = v.item() if isinstance(v, np.generic) else v
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                shown = f"an array of {len(v)}" if isinstance(v, (list, np.ndarray)) else repr(v)[:40]
                raise UnsupportedTokenizer(f"tokenizer.ggml.{key}_token_id must be an integer, got {shown}")
            return v

        special_ids = {}
        for key in ("eot", "eom", "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"):
            if (v := _id(key)) is not None:
                special_ids[key] = v
        for old, new in (("prefix", "fim_pre"), ("suffix", "fim_suf"), ("middle", "fim_mid")):
            if (v := _id(old)) is not None:
                special_ids[new] = v

        def _opt_bool(key):
            v = g.value(key)
            return None if v is None else bool(v)

        charsmap = g.value("tokenizer.ggml.precompiled_charsmap")
        if charsmap is not None:  # int8 or uint8 values
            charsmap = np.asarray(charsmap).astype(np.uint8).tobytes()

        return cls(
            model=str(model), tokens=list(tokens), token_types=g.value("tokenizer.ggml.token_type"),
            scores=g.value("tokenizer.ggml.scores"), merges=g.value("tokenizer.ggml.merges"),
            pre=g.value("tokenizer.ggml.pre"), bos_id=_id("bos"), eos_id=_id("eos"), unk_id=_id("unknown"),
            pad_id=_id("padding"), sep_id=_id("seperator"),  # sic: the GGUF key's spelling
            add_bos=_opt_bool("tokenizer.ggml.add_bos_token"), add_eos=_opt_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix=_opt_bool("tokenizer.ggml.add_space_prefix"), special_ids=special_ids,
            lowercase=_opt_bool("tokenizer.ggml.normalizer.lowercase"),
            strip_accents=_opt_bool("tokenizer.ggml.normalizer.strip_accents"), charsmap=charsmap,
            remove_extra_whitespaces=_opt_bool("tokenizer.ggml.remove_extra_whitespaces"))

    def _init_special(self, ids: dict[str, int]) -> None:
        n = self.n_vocab
        ids = {k: v for k, v in ids.items() if 0 <= v < n}

        def by_name(names) -> int | None:
            found = [self.token_to_id[t] for t in names if t in self.token_to_id]
            return min(found) if found else None

        # like llama.cpp: look the token up by its text when the GGUF does not name it, and make it a control token
        for key, names in (("eot", _EOT_NAMES), ("eom", _EOM_NAMES), *_FIM_NAMES.items()):
            if key not in ids:
                tid = by_name(names)
                if tid is not None:
                    ids[key] = tid
                    self.attrs[tid] |= ATTR_CONTROL
        self.eot_id: int | None = ids.get("eot")
        self.eom_id: int | None = ids.get("eom")
        self.fim_ids: dict[str, int] = {k: v for k, v in ids.items() if k.startswith("fim_")}
        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if k in ids}
        for t in _EOG_NAMES:
            tid = self.token_to_id.get(t)
            if tid is not None:
                eog.add(tid)
                self.attrs[tid] |= ATTR_CONTROL
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
            if t in self.token_to_id:
                self.attrs[self.token_to_id[t]] = ATTR_USER_DEFINED
        for tid in (self.eos_id, self.eot_id, self.eom_id):
            if tid is not None:
                eog.add(tid)
        eog_texts = {self.tokens[i] for i in eog}
        end = self.token_to_id.get("<|end|>")
        if end in eog and ({"<|return|>", "<|call|>"} <= eog_texts or {"<|calls|>", "<|flush|>"} <= eog_texts):
            eog.discard(end)  # o200k_harmony / solar-open: <|end|> ends a message, not the generation
            self.attrs[end] = ATTR_USER_DEFINED
        eos_text = self.token_to_id.get("</s>")
        if eos_text in eog and eog_texts & {"<|tool_response>", "<|plamo:eos|>"}:
            eog.discard(eos_text)  # gemma4, plamo: a normal </s>
            self.attrs[eos_text] = ATTR_NORMAL
        self.eog_ids: set[int] = eog
        # special tokens matched in the text: longest first (ties: lower id first)
        special = [i for i, a in enumerate(self.attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        special.sort(key=lambda i: (-len(_raw(self.tokens[i])), i))
        self._special: list[tuple[str, int, bool]] = [
            (self.tokens[i], i, bool(self.attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN))) for i in special]

    # -- information -----------------------------------------------------------------------------------------------
    def token_text(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (``▁`` / byte-level characters included)."""
        return self.tokens[token_id]

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def is_special(self, token_id: int) -> bool:
        """Control or unknown tokens: the ones ``decode(skip_special=True)`` leaves out."""
        return bool(self.attrs[token_id] & (ATTR_CONTROL | ATTR_UNKNOWN))

    # -- encoding --------------------------------------------------------------------------------------------------
    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split the text around the special tokens it contains: a list of text fragments (str) and token ids."""
        frags: list[str | int] = [text]
        for tok_text, tid, is_ctrl in self._special:
            if is_ctrl and not parse_special:
                continue
            if tok_text not in text:
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok_text not in f:
                    out.append(f)
                    continue
                start = 0
                while True:
                    k = f.find(tok_text, start)
                    if k < 0:
                        break
                    if k > start:
                        out.append(f[start:k])
                    out.append(tid)
                    start = k + len(tok_text)
                if start < len(f):
                    out.append(f[start:])
            frags = out
        return frags

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True, *,
               add_eos: bool | None = None) -> list[int]:
        """Token ids of ``text``, as ``llama_tokenize``.

        ``add_bos``: None uses the model's default (``tokenizer.ggml.add_bos_token``); ``add_eos``: None appends EOS
        only when the model asks for it (``add_eos_token``) and ``add_bos`` is not False (llama.cpp's add_special).
        WordPiece ("bert") frames the text as BERT does: with ``add_bos``, [CLS] before it and [SEP] after it.
        ``parse_special``: control tokens written in the text become their ids (user-defined ones always do).
        """
        if add_eos is None:
            add_eos = self.add_eos and add_bos is not False
        if add_bos is None:
            add_bos = self.add_bos
        require_utf8(text, "the text to tokenize")
        out: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise UnsupportedTokenizer("this model asks for a BOS token but has none")
            out.append(self.bos_id)
        if text:
            self._encode_fragments(self._partition(text, parse_special), out)
        if add_bos and self.is_wpm:
            if self.sep_id is None:
                raise ValueError("this model has no SEP token")
            out.append(self.sep_id)
        if add_eos:
            if self.eos_id is None:
                raise ValueError("this model has no EOS token")
            out.append(self.eos_id)
        return out

    def _encode_fragments(self, frags: list[str | int], out: list[int]) -> None:
        """The ids of text fragments and special tokens (ids already) in order, by the vocabulary's model."""
        if self.is_spm:
            prev_special = True
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                else:
                    if self.add_space_prefix and prev_special:
                        f = " " + f
                    self._spm_encode(f.replace(" ", SPM_SPACE), out)
                    prev_special = False
            return
        for f in frags:
            if isinstance(f, int):
                out.append(f)
            elif self.is_wpm:
                self._wpm_encode(f, out)
            elif self.is_ugm:
                out.extend(self._ugm.encode(f))
            else:
                self._bpe_encode(f.replace(" ", SPM_SPACE) if self._pre.escape_spaces else f, out)

    def _remember(self, key: str, ids: tuple[int, ...]) -> None:
        if len(self._cache) >= 200_000:
            self._cache.clear()
        self._cache[key] = ids

    # byte-level BPE
    def _pretokenize(self, text: str) -> list[str]:
        pieces = [text]
        for rx in self._stages:
            out = []
            for p in pieces:
                pos = 0
                for m in rx.finditer(p):
                    s, e = m.span()
                    if s > pos:
                        out.append(p[pos:s])
                    out.append(p[s:e])
                    pos = e
                if pos < len(p):
                    out.append(p[pos:])
            pieces = out
        return pieces

    def _bpe_encode(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for word in self._pretokenize(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                self._remember(word, ids)
            out.extend(ids)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        pre = self._pre
        if pre.byte_level:
            word = word.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTELEVEL)
        vocab = self.token_to_id
        whole = pre.ignore_merges or (pre.newline_runs and not word.strip("\n"))
        if whole and word in vocab:
            return (vocab[word],)
        syms = list(word)
        n = len(syms)
        if n > 1:
            ranks = self._ranks
            nxt = list(range(1, n + 1))
            nxt[-1] = -1
            prv = list(range(-1, n - 1))
            heap = []
            for i in range(n - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None:
                    heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
            heapq.heapify(heap)
            while heap:
                _, left, right, joined = heapq.heappop(heap)
                ls, rs = syms[left], syms[right]
                if not ls or not rs or nxt[left] != right or ls + rs != joined:
                    continue  # outdated
                syms[left] = joined
                syms[right] = ""
                nr = nxt[right]
                nxt[left] = nr
                if nr >= 0:
                    prv[nr] = left
                p = prv[left]
                if p >= 0:
                    r = ranks.get((syms[p], joined))
                    if r is not None:
                        heapq.heappush(heap, (r, p, left, syms[p] + joined))
                if nr >= 0:
                    r = ranks.get((joined, syms[nr]))
                    if r is not None:
                        heapq.heappush(heap, (r, left, nr, joined + syms[nr]))
        ids = []
        for s in syms:
            if not s:
                continue
            tid = vocab.get(s)
            if tid is not None:
                ids.append(tid)
                continue
            # no such token: llama.cpp writes each UTF-8 byte of the symbol as its byte token, if there is one
            for b in _raw(s):
                tid = self._byte_fallback[b]
                if tid is not None:
                    ids.append(tid)
        return tuple(ids)

    # WordPiece
    def _wpm_encode(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for word in self._wpm.split(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._wpm.word_ids(word)
                self._remember(word, ids)
            out.extend(ids)

    # SentencePiece
    def _spm_encode(self, text: str, out: list[int]) -> None:
        pairs = self._spm_pairs
        cache = self._cache
        cuts = [k for k in range(1, len(text)) if text[k - 1:k + 1] not in pairs]
        cuts.append(len(text))
        start = 0
        for k in cuts:
            chunk = text[start:k]
            start = k
            ids = cache.get(chunk)
            if ids is None:
                ids = self._spm_chunk(chunk)
                self._remember(chunk, ids)
            out.extend(ids)

    def _spm_chunk(self, text: str) -> tuple[int, ...]:
        vocab = self.token_to_id
        get = vocab.get
        scores = self.scores
        syms = list(text)
        n = len(syms)
        if n > 1:
            nxt = list(range(1, n + 1))
            nxt[-1] = -1
            prv = list(range(-1, n - 1))
            heap = []
            for i in range(n - 1):
                joined = syms[i] + syms[i + 1]
                tid = get(joined)
                if tid is not None:
                    heap.append((-scores[tid], i, i + 1, 2))
            heapq.heapify(heap)
            push, pop = heapq.heappush, heapq.heappop
            while heap:
                _, left, right, size = pop(heap)
                ls, rs = syms[left], syms[right]
                if not ls or not rs or len(ls) + len(rs) != size:
                    continue  # one side already merged elsewhere
                ls += rs
                syms[left] = ls
                syms[right] = ""
                nr = nxt[right]
                nxt[left] = nr
                p = prv[left]
                if p >= 0:
                    joined = syms[p] + ls
                    tid = get(joined)
                    if tid is not None:
                        push(heap, (-scores[tid], p, left, len(joined)))
                if nr >= 0:
                    prv[nr] = left
                    joined = ls + syms[nr]
                    tid = get(joined)
                    if tid is not None:
                        push(heap, (-scores[tid], left, nr, len(joined)))
        ids = []
        for s in syms:
            if not s:
                continue
            tid = get(s)
            if tid is not None:
                ids.append(tid)
            else:  # byte fallback
                for b in s.encode("utf-8"):
                    tid = self._byte_ids[b]
                    if tid is None:
                        raise ValueError(f"no byte token for 0x{b:02X} and no unknown token")
                    ids.append(tid)
        return tuple(ids)

    # -- decoding --------------------------------------------------------------------------------------------------
    def piece_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes this token stands for (``llama_token_to_piece``). ``special=False`` gives b"" for control and
        unknown tokens; unused tokens always give b""."""
        key = (token_id, special)
        piece = self._pieces.get(key)
        if piece is None:
            if not 0 <= token_id < self.n_vocab:
                raise IndexError(f"token id {token_id} out of range (vocabulary of {self.n_vocab})")
            piece = self._piece(token_id, special)
            self._pieces[key] = piece
        return piece

    def _piece(self, tid: int, special: bool) -> bytes:
        attr = self.attrs[tid]
        text = self.tokens[tid]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return _raw(text) if special else b""
        if attr & ATTR_USER_DEFINED:
            return _raw(text)
        if attr & ATTR_NORMAL:
            if self._escaped_spaces:
                return _raw(text.replace(SPM_SPACE, " "))
            out = bytearray()
            for c in text:
                b = _CHAR_TO_BYTE.get(c)
                if b is not None:
                    out.append(b)
                else:  # not a byte-level character: llama.cpp writes a marker
                    u = _raw(c)
                    out += b"[UNK_BYTE_0x" + u.hex().encode() + _raw(text) + b"]"
            return bytes(out)
        if attr & ATTR_BYTE:
            return bytes((_hex_byte(text),))
        return b""

    def _byte_pieces(self, ids: Iterable[int], skip_special: bool) -> Iterator[bytes]:
        strip = _LeadingSpace(self, skip_special)
        for t in ids:
            yield strip(t)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """The text of ``ids``. Pieces are joined as llama.cpp's ``llama_token_to_piece`` gives them (no
        clean-up of spaces); with ``add_space_prefix`` (SentencePiece) the first piece loses one leading space, the
        first piece after a leading BOS when ``skip_special`` (as llama-cpp-python's ``Llama.detokenize``).
        Invalid UTF-8 becomes U+FFFD."""
        return b"".join(self._byte_pieces(ids, skip_special)).decode("utf-8", "replace")

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        return b"".join(self._byte_pieces(ids, skip_special))


class _LeadingSpace:
    """Per-token pieces with the leading-space removal of ``Tokenizer.decode`` (stateful, token by token)."""

    def __init__(self, tok: Tokenizer, skip_special: bool):
        self.tok = tok
        self.special = not skip_special
        self.first = True
        self.pending = tok.add_space_prefix  # a leading space still to remove
        self.any_piece = False               # remove it from the first non-empty piece instead of the first token

    def __call__(self, t: int) -> bytes:
        tok = self.tok
        piece = tok.piece_bytes(t, self.special)
        if self.first:
            self.first = False
            if t == tok.bos_id and not self.special and self.pending:
                self.any_piece = True  # BOS skipped: the space goes from the text that follows it
                return piece
            if self.pending and piece[:1] == b" ":
                piece = piece[1:]
            self.pending = False  # the first token takes the removal, even if its piece is empty (llama.cpp)
            return piece
        if self.any_piece and piece:
            self.any_piece = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return piece


class StreamDecoder:
    """Streaming detokenization: ``feed`` token ids one by one; the strings returned (plus ``flush``) concatenate to
    ``tok.decode(ids, skip_special)`` and never split a UTF-8 character (incomplete bytes wait for the next token).
    With ``continuation`` the tokens follow text already there (a generation after its prompt): no leading space is
    removed from the first, as llama.cpp's token_to_piece keeps it."""

    def __init__(self, tok: Tokenizer, skip_special: bool = False, continuation: bool = False):
        self.tok = tok
        self._pieces = _LeadingSpace(tok, skip_special)
        if continuation:
            self._pieces.first = self._pieces.pending = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._pieces(token_id))

    def flush(self) -> str:
        """The rest (an incomplete UTF-8 sequence at the end becomes U+FFFD); the decoder can be reused after."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out
