"""Tokenizer → GGUF metadata: byte-level BPE (`gpt2`) from tokenizer.json, SentencePiece (`llama`) from
tokenizer.model, special token ids, add_bos/add_eos, and the chat template. The vocabulary is padded to the config's
vocab_size with `[PAD{i}]` entries, as llama.cpp's converters do."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gguf import TokenType

from common.errors import UserError

SPECIAL_KINDS = ("bos", "eos", "unk", "pad")
PAD_LIMIT = 1 << 16  # placeholders always allowed beyond the tokenizer's own tokens when no weights confirm vocab_size


@dataclass
class Vocab:
    model: str                       # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None           # tokenizer.ggml.pre (BPE only)
    special: dict[str, int] = field(default_factory=dict)
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None  # SentencePiece: whether a space is put before the text (absent: yes)
    chat_template: str | None = None

    def kv(self) -> dict[str, object]:
        """GGUF keys → values; list values are arrays (typed by the caller from the key)."""
        out: dict[str, object] = {"tokenizer.ggml.model": self.model}
        if self.pre is not None:
            out["tokenizer.ggml.pre"] = self.pre
        out["tokenizer.ggml.tokens"] = self.tokens
        if self.scores is not None:
            out["tokenizer.ggml.scores"] = self.scores
        out["tokenizer.ggml.token_type"] = self.types
        if self.merges is not None:
            out["tokenizer.ggml.merges"] = self.merges
        for kind in SPECIAL_KINDS:
            if kind in self.special:
                key = "unknown" if kind == "unk" else "padding" if kind == "pad" else kind
                out[f"tokenizer.ggml.{key}_token_id"] = self.special[kind]
        if self.add_bos is not None:
            out["tokenizer.ggml.add_bos_token"] = self.add_bos
        if self.add_eos is not None:
            out["tokenizer.ggml.add_eos_token"] = self.add_eos
        if self.add_space_prefix is not None:
            out["tokenizer.ggml.add_space_prefix"] = self.add_space_prefix
        if self.chat_template:
            out["tokenizer.chat_template"] = self.chat_template
        return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path.name} is not valid JSON") from None
    return data if isinstance(data, dict) else {}


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>", "<s>", "</s>", "<unk>")


def _added_tokens(tok_json: dict, vocab_size: int) -> list[dict]:
    """tokenizer.json's added_tokens, each checked: an object with an integer id in 0..vocab_size-1 and its text."""
    added = tok_json.get("added_tokens", [])
    if not isinstance(added, list):
        raise UserError("tokenizer.json: added_tokens must be a list")
    for a in added:
        if not isinstance(a, dict) or not isinstance(a.get("content"), str):
            raise UserError(f"tokenizer.json: each added token needs a text (content), got {str(a)[:80]}")
        _check_id(a.get("id"), a["content"], vocab_size, "tokenizer.json")
    return added


def _check_id(i, text: str, vocab_size: int, where: str) -> None:
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
        raise UserError(f"{where}: token {text[:40]!r} has id {i!r}; ids must be integers from 0 to "
                        f"{vocab_size - 1} (config.json's vocab_size {vocab_size})")


def check_padding(n_tokens: int, vocab_size: int, bounded: bool) -> None:
    """Refuse to pad n_tokens to vocab_size with more `[PAD{i}]` entries than there are tokens (or 65536), unless the
    checkpoint's embedding rows confirmed vocab_size (`bounded` False). llama.cpp's converters pad to any vocab_size;
    without weights a typo in config.json would otherwise make a file of 10^8 padding tokens."""
    if bounded and vocab_size - n_tokens > max(n_tokens, PAD_LIMIT):
        raise UserError(f"config.json's vocab_size {vocab_size} would pad the tokenizer's {n_tokens} tokens with "
                        f"{vocab_size - n_tokens} placeholders (at most {max(n_tokens, PAD_LIMIT)} without weights "
                        "whose embedding rows confirm it)")


def _pad_to(tokens: list, types: list, scores: list | None, vocab_size: int, bounded: bool) -> None:
    check_padding(len(tokens), vocab_size, bounded)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)


def load_vocab(folder: Path, vocab_size: int, tokenizer_pre: str | None = None, weights: bool = False) -> Vocab:
    """The folder's tokenizer as GGUF metadata; `tokenizer_pre` names the BPE pre-tokenizer instead of detecting it.
    `weights`: the checkpoint's embedding rows have been checked to be vocab_size (else its padding is bounded)."""
    tok_json = _read_json(folder / "tokenizer.json")
    if not isinstance(tok_json.get("model", {}), dict):
        raise UserError("tokenizer.json: model must be an object")
    if (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece(folder, tok_json, vocab_size, not weights)
    elif tok_json.get("model", {}).get("type") == "BPE":
        from converter.bpe_pre import detect

        _check_byte_level(tok_json["model"])
        vocab = _bpe(tok_json, vocab_size, tokenizer_pre or detect(folder, tok_json), not weights)
    elif not tok_json and any(folder.glob("*.tiktoken")):
        vocab = _tiktoken(folder, vocab_size, not weights)
    elif tok_json:
        raise UserError(f"tokenizer.json has model type {tok_json.get('model', {}).get('type')!r}; "
                        "supported: BPE, or a SentencePiece tokenizer.model")
    else:
        raise UserError(f"no tokenizer in {folder}: expected tokenizer.json, tokenizer.model or a *.tiktoken file")
    _special_tokens(folder, tok_json, vocab)
    return vocab


def _check_byte_level(model: dict) -> None:
    """Refuse what llama.cpp's byte-level BPE does not implement: a word-piece prefix or suffix on merged tokens (the
    tokenizers library also panics on a prefix longer than a merge's second token)."""
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) not in (None, ""):
            raise UserError(f"tokenizer.json: model.{key} {str(model[key])[:40]!r} is not supported "
                            "(byte-level BPE merges tokens without a prefix or suffix)")


def _bpe(tok_json: dict, vocab_size: int, pre: str, bounded: bool) -> Vocab:
    model = tok_json["model"]
    if not isinstance(model.get("vocab"), dict):
        raise UserError("tokenizer.json: model.vocab must be an object of token → id")
    for t, i in model["vocab"].items():
        _check_id(i, t, vocab_size, "tokenizer.json")
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in _added_tokens(tok_json, vocab_size)}
    for i, a in added.items():
        by_id[i] = a["content"]
    n = max(by_id) + 1 if by_id else 0
    if n > vocab_size:
        raise UserError(f"the tokenizer has {n} tokens but config.json says vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special") or _looks_special(by_id[i])
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    _pad_to(tokens, types, None, vocab_size, bounded)
    merges = model.get("merges", [])
    if not isinstance(merges, list) or not all(isinstance(m, str) or (isinstance(m, list) and len(m) == 2 and
                                                                    all(isinstance(p, str) for p in m)) for m in merges):
        raise UserError("tokenizer.json: model.merges must be a list of \"a b\" strings or [a, b] pairs")
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return Vocab("gpt2", tokens, [int(t) for t in types], merges=merges, pre=pre)


def _tiktoken(folder: Path, vocab_size: int, bounded: bool) -> Vocab:
    from converter.vocab_tiktoken import tiktoken_vocab

    tokens, types, merges, pre, specials = tiktoken_vocab(folder, vocab_size, bounded)
    vocab = Vocab("gpt2", tokens, types, merges=merges, pre=pre)
    # as llama.cpp's converter: the end-of-text token stands for unknown (and for bos/eos when config.json names none)
    eot = specials.get("<|endoftext|>")
    if eot is not None:
        vocab.special["unk"] = eot
    return vocab


def _sentencepiece(folder: Path, tok_json: dict, vocab_size: int, bounded: bool) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(folder / "tokenizer.model"))
    except (OSError, RuntimeError) as e:
        raise UserError(f"tokenizer.model cannot be read: {str(e).splitlines()[0]}") from None
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        types.append(TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                     else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i)
                     else TokenType.NORMAL)
    # Tokens added on top of the SentencePiece model (added_tokens.json / tokenizer.json) keep their ids.
    extra = {a["id"]: (a["content"], bool(a.get("special"))) for a in _added_tokens(tok_json, vocab_size)}
    for content, i in _read_json(folder / "added_tokens.json").items():
        _check_id(i, content, vocab_size, "added_tokens.json")
        extra.setdefault(i, (content, False))
    for i, (content, special) in sorted(extra.items()):
        if i < len(tokens):
            if tokens[i] == content:
                continue
            tokens[i], scores[i] = content, -1000.0
        else:
            if i >= vocab_size:
                raise UserError(f"added token {content!r} has id {i}, beyond vocab_size {vocab_size}")
            _pad_to(tokens, types, scores, i, bounded)
            tokens.append(content)
            scores.append(-1000.0)
            types.append(TokenType.UNUSED)
        types[i] = TokenType.CONTROL if special or _looks_special(content) else TokenType.USER_DEFINED
    if len(tokens) > vocab_size:
        raise UserError(f"the tokenizer has {len(tokens)} tokens but config.json says vocab_size {vocab_size}")
    _pad_to(tokens, types, scores, vocab_size, bounded)
    return Vocab("llama", tokens, [int(t) for t in types], scores=scores, pre="default")  # as llama.cpp writes it


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _post_processor_adds(tok_json: dict, bos: str | None, eos: str | None) -> dict[str, bool]:
    """Whether tokenizer.json's post-processor puts BOS in front of / EOS after a single text: a template of more than
    the text itself that starts / ends with that special token (Roberta's always does both; ByteLevel adds none).
    Only what a processor states is returned."""
    post = tok_json.get("post_processor")
    if not isinstance(post, dict):
        return {}
    out: dict[str, bool] = {}
    for proc in post.get("processors", [post]):
        if not isinstance(proc, dict):
            continue
        kind = proc.get("type")
        if kind == "ByteLevel":
            out.setdefault("bos", False)
            out.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            out.update(bos=True, eos=True)
        elif kind == "TemplateProcessing":
            single = proc.get("single")
            if not isinstance(single, list) or len(single) < 2:
                continue
            ends = [item.get("SpecialToken", {}).get("id") if isinstance(item, dict) else None
                    for item in (single[0], single[-1])]
            if ends[0] is not None:
                out["bos"] = ends[0] == bos
            if ends[1] is not None:
                out["eos"] = ends[1] == eos
    return out


def _token_id_in(value: object, n_vocab: int) -> bool:
    """config.json's *_token_id names a token of the vocabulary (-1, as old Llama configs give pad_token_id, does
    not: it is skipped like an id beyond the vocabulary)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_vocab


def _special_tokens(folder: Path, tok_json: dict, vocab: Vocab) -> None:
    """Special ids from tokenizer_config.json / special_tokens_map.json, falling back to config.json's *_token_id."""
    cfg = _read_json(folder / "tokenizer_config.json")
    smap = _read_json(folder / "special_tokens_map.json")
    model_cfg = _read_json(folder / "config.json")
    if isinstance(model_cfg.get("text_config"), dict):  # a multimodal model: its text model's ids
        model_cfg = {**model_cfg, **model_cfg["text_config"]}
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    for a in _added_tokens(tok_json, len(vocab.tokens)):
        ids[a["content"]] = a["id"]
    for kind in SPECIAL_KINDS:
        text = _token_text(cfg.get(f"{kind}_token")) or _token_text(smap.get(f"{kind}_token"))
        if text is not None and text in ids:
            vocab.special[kind] = ids[text]
        elif _token_id_in(model_cfg.get(f"{kind}_token_id"), len(vocab.tokens)):
            vocab.special[kind] = model_cfg[f"{kind}_token_id"]
    # What tokenizer.json's post-processor adds wins (as transformers 5 and llama.cpp's converter decide); else
    # tokenizer_config.json; else the Hugging Face classes' defaults: LlamaTokenizer adds BOS, GPT2Tokenizer does not.
    bos_text = vocab.tokens[vocab.special["bos"]] if "bos" in vocab.special else None
    eos_text = vocab.tokens[vocab.special["eos"]] if "eos" in vocab.special else None
    declared = _post_processor_adds(tok_json, bos_text, eos_text)
    vocab.add_bos = declared.get("bos", bool(cfg.get("add_bos_token", vocab.model == "llama")))
    vocab.add_eos = declared.get("eos", bool(cfg.get("add_eos_token", False)))
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif not template:
        template = _read_json(folder / "chat_template.json").get("chat_template")
    vocab.chat_template = template if isinstance(template, str) and template else None
