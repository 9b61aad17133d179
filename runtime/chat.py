"""Chat prompts: the model's own `tokenizer.chat_template` (Jinja, sandboxed) when it has one, otherwise a built-in
format chosen by the architecture's recipe (or by name): CodeShell's `## human:`/`## assistant:` turns, Llama-2 `[INST]`, ChatML,
Gemma's `<start_of_turn>`, Phi-3's `<|user|>`."""
from __future__ import annotations

from dataclasses import dataclass

import archs
from common.errors import UserError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    stop: tuple[str, ...]  # strings that end the assistant's turn

    def render(self, messages: list[dict], bos: str, eos: str) -> str:
        raise NotImplementedError


class CodeShellFormat(ChatFormat):
    def render(self, messages, bos, eos):
        out = []
        for m in messages:
            if m["role"] in ("user", "system"):
                out.append(f"## human:{m['content']}|<end>|")
            else:
                out.append(f"## assistant: {m['content']}|<end>|")
        return "".join(out) + "## assistant:"


class Llama2Format(ChatFormat):
    def render(self, messages, bos, eos):
        system = ""
        if messages and messages[0]["role"] == "system":
            system, messages = f"<<SYS>>\n{messages[0]['content']}\n<</SYS>>\n\n", messages[1:]
        out = ""
        for m in messages:
            if m["role"] == "user":
                out += f"{bos}[INST] {system}{m['content'].strip()} [/INST]"
                system = ""
            else:
                out += f" {m['content'].strip()} {eos}"
        return out


class ChatMLFormat(ChatFormat):
    def render(self, messages, bos, eos):
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + "<|im_start|>assistant\n"


class GemmaFormat(ChatFormat):
    """Gemma's turns: <start_of_turn>user / model ... <end_of_turn>; a system message opens the first user turn."""

    def render(self, messages, bos, eos):
        out, system = bos, ""
        for m in messages:
            if m["role"] == "system":
                system = m["content"] + "\n\n"
                continue
            role = "model" if m["role"] == "assistant" else "user"
            content = m["content"]
            if role == "user":
                content, system = system + content, ""
            out += f"<start_of_turn>{role}\n{content}<end_of_turn>\n"
        return out + "<start_of_turn>model\n"


class Phi3Format(ChatFormat):
    """Phi-3's turns, as llama.cpp writes them: <|role|>\ncontent<|end|>\n for every message, then <|assistant|>."""

    def render(self, messages, bos, eos):
        body = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
        return body + "<|assistant|>\n"


class JinjaFormat(ChatFormat):
    def __init__(self, template: str, stop: tuple[str, ...]):
        object.__setattr__(self, "name", "jinja")
        object.__setattr__(self, "stop", stop)
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            object.__setattr__(self, "_template", env.from_string(template))
        except TemplateError as e:
            raise UserError(f"the chat template does not parse: {e}") from None

    def render(self, messages, bos, eos):
        from jinja2 import TemplateError
        try:
            return self._template.render(messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)
        except TemplateError as e:
            raise UserError(f"the chat template failed: {e}") from None


BUILTIN = {
    "codeshell": CodeShellFormat("codeshell", ("|<end>|", "|end|", "<|endoftext|>", "## human")),
    "llama-2": Llama2Format("llama-2", ("</s>",)),
    "chatml": ChatMLFormat("chatml", ("<|im_end|>", "<|endoftext|>")),
    "gemma": GemmaFormat("gemma", ("<end_of_turn>", "<eos>")),
    "phi3": Phi3Format("phi3", ("<|end|>", "<|endoftext|>")),
}


def chat_format(arch: str, template: str | None, name: str | None = None) -> ChatFormat:
    """`name` (a built-in name or a Jinja template text) overrides; else the file's template; else by architecture."""
    if name:
        if name in BUILTIN:
            return BUILTIN[name]
        if "{%" in name or "{{" in name:
            return JinjaFormat(name, ("<|im_end|>", "</s>", "<|endoftext|>"))
        raise UserError(f"unknown chat template {name!r}; built-in: {', '.join(BUILTIN)}")
    if template:
        return JinjaFormat(template, ("<|im_end|>", "</s>", "<|endoftext|>", "<|eot_id|>"))
    return BUILTIN[archs.BY_GGUF[arch].recipe.chat_format if arch in archs.BY_GGUF else "chatml"]


def prompt_tokens(fmt: ChatFormat, tok, messages: list[dict]) -> list[int]:
    """A conversation rendered with `fmt` and tokenized (special tokens parsed), ready for the assistant's turn;
    BOS is added unless the template already wrote it."""
    bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
    eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
    prompt = fmt.render(messages, bos, eos)
    return tok.encode(prompt, add_bos=tok.add_bos and not (bos and prompt.startswith(bos)), parse_special=True)
