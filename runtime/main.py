"""`toolkit run`: llama.cpp's `main` on our runtime — prompt completion, interactive mode with reverse prompts,
and chat (-cnv / -ins) with the model's template; generated text to stdout, timings to stderr at the end."""
from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass, field
from typing import TextIO

from runtime.chat import chat_format, prompt_tokens
from runtime.generate import Session
from runtime.grammar import Grammar
from runtime.sampling import Sampler, SamplingParams
from runtime.tokenizer import StreamDecoder
from common.errors import UserError

COLOR_PROMPT, COLOR_USER, COLOR_RESET = "\033[33m", "\033[1;32m", "\033[0m"


@dataclass
class RunOptions:
    model: str
    prompt: str = ""
    n_predict: int = -1
    n_ctx: int = 512
    n_batch: int = 512
    n_threads: int | None = None
    cache_type: str = "f16"
    cache_type_v: str | None = None     # values' type (default: the keys')
    context_shift: bool = False         # a full context: shift it and go on (--context-shift), else stop
    n_keep: int = 0                     # tokens kept at the start when shifting (--keep; -1: the whole prompt)
    verbose: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)
    ignore_eos: bool = False
    escape: bool = True
    color: bool = False
    verbose_prompt: bool = False
    interactive: bool = False
    chat: bool = False
    reverse_prompts: list[str] = field(default_factory=list)
    chat_template: str | None = None
    jinja: bool = True                  # the file's own Jinja template (--jinja, llama.cpp's default), else built-in
    grammar: Grammar | None = None      # every generation follows it (--grammar, --grammar-file, -j)
    use_mmap: bool = True               # map the model file (--mmap), else a copy in huge pages (--no-mmap)


def unescape(text: str) -> str:
    """llama.cpp's -e: \\n, \\t, \\\\, \\", \\' and friends."""
    return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape") if "\\" in text else text


class Runner:
    def __init__(self, opts: RunOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr, inp: TextIO = sys.stdin):
        self.opts, self.out, self.err, self.inp = opts, out, err, inp
        self.session = Session(opts.model, n_ctx=opts.n_ctx, n_batch=opts.n_batch, n_threads=opts.n_threads,
                               cache_type=opts.cache_type, cache_type_v=opts.cache_type_v, ctx_name="-c",
                               use_mmap=opts.use_mmap)
        self.session.context_shift = opts.context_shift
        self.tok = self.session.tokenizer
        self.sampler = Sampler(opts.sampling, self.tok)
        hp = self.session.model.hp
        pre = f", pre-tokenizer {self.tok.pre}" if self.tok.pre else ""
        print(f"model: {hp.arch}, tokenizer {self.tok.model}{pre}, trained context {hp.n_ctx_train}, "
              f"context {self.session.n_ctx}", file=self.err)

    def _write(self, text: str, color: str | None = None) -> None:
        if color and self.opts.color:
            text = f"{color}{text}{COLOR_RESET}"
        self.out.write(text)
        self.out.flush()

    def _check_fits(self, tokens: list[int]) -> None:
        if len(tokens) >= self.session.n_ctx:
            raise UserError(f"prompt is too long ({len(tokens)} tokens, max {self.session.n_ctx - 1}); "
                            "raise -c or shorten the prompt")

    def _generate(self, new_tokens: list[int], limit: int, stops: list[str]) -> str:
        """Stream the continuation of the context + new_tokens until an end-of-generation token, a stop string
        (reverse prompt / chat stop, which is printed for reverse prompts as llama.cpp does), or `limit` tokens."""
        decoder, text = StreamDecoder(self.tok, continuation=True), ""
        for token in self.session.generate(new_tokens, limit, self.opts.sampling, self.opts.ignore_eos,
                                           sampler=self.sampler, grammar=self.opts.grammar):
            piece = decoder.feed(token)
            text += piece
            self._write(piece)
            if any(text.endswith(s) for s in stops):
                break
        tail = decoder.flush()
        self._write(tail)
        return text + tail

    def run(self) -> None:
        o = self.opts
        prompt = unescape(o.prompt) if o.escape else o.prompt
        if o.chat:
            self.chat_loop(prompt)
        else:
            tokens = self.tok.encode(prompt, parse_special=True)
            if not tokens:
                tokens = [self.tok.bos_id] if self.tok.bos_id is not None else []
            if not tokens:
                raise UserError("empty prompt and the model has no BOS token")
            self._check_fits(tokens)
            self._set_keep(tokens)
            if o.verbose_prompt:
                self._show_tokens(tokens)
            self._write(prompt, COLOR_PROMPT)
            limit = o.n_predict if o.n_predict >= 0 else -1
            self._generate(tokens, limit, o.reverse_prompts)
            # interactive: after each stop (reverse prompt, end of generation, -n tokens) the user continues the text
            while o.interactive:
                line = self._read_user()
                if line is None:
                    break
                self._generate(self.tok.encode(line, add_bos=False, parse_special=True), limit, o.reverse_prompts)
        self._write("\n")
        print(self.session.timings.report(peak_rss=self.opts.verbose), file=self.err)

    def _set_keep(self, prompt: list[int]) -> None:
        """--keep as llama.cpp's main counts it: -1 (or more than the prompt) keeps the whole prompt, else N tokens
        after the BOS."""
        n, bos = self.opts.n_keep, int(bool(prompt) and prompt[0] == self.tok.bos_id)
        self.session.n_keep = len(prompt) if n < 0 or n > len(prompt) else n + bos

    def _read_user(self) -> str | None:
        self._write("\n> " if self.opts.chat else "", None)
        line = self.inp.readline()
        if not line:
            return None
        if self.opts.color:
            self._write("", COLOR_USER)
        line = line.rstrip("\n")
        return (unescape(line) if self.opts.escape else line) + ("" if self.opts.chat else "\n")

    def chat_loop(self, system: str) -> None:
        g = self.session.model.gguf
        fmt = chat_format(self.session.model.hp.arch, g.value("tokenizer.chat_template") if self.opts.jinja else None,
                          self.opts.chat_template)
        messages = [{"role": "system", "content": system}] if system else []
        while True:
            line = self._read_user()
            if line is None:
                return
            messages.append({"role": "user", "content": line})
            tokens = prompt_tokens(fmt, self.tok, messages)
            self._check_fits(tokens)
            new = tokens[self.session.reuse_prefix(tokens):]  # the conversation so far stays in the cache
            reply = self._generate(new, self.opts.n_predict, list(fmt.stop))
            for s in fmt.stop:
                if reply.endswith(s):
                    reply = reply[: -len(s)]
            messages.append({"role": "assistant", "content": reply.strip()})

    def _show_tokens(self, tokens: list[int]) -> None:
        print(f"prompt: '{self.opts.prompt}'\nnumber of tokens in prompt = {len(tokens)}", file=self.err)
        for t in tokens:
            print(f"{t:6d} -> '{self.tok.piece_bytes(t).decode('utf-8', 'replace')}'", file=self.err)

    def close(self) -> None:
        self.session.close()
