"""Chat prompts: the model's own `tokenizer.chat_template` (Jinja, sandboxed) when it has one, otherwise a built-in
format chosen by the architecture's recipe (or by name): CodeShell's `## human:`/`## assistant:` turns, Llama-2 `[INST]`, ChatML,
Gemma's `<start_of_turn>`, Phi-3's `<|user|>`."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import archs
from common.errors import UserError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    stop: tuple[str, ...]  # strings that end the assistant's turn

    supports_tools = False  # whether the format itself shows `tools` (else runtime.tools writes a generic prompt)

    def render(self, messages: list[dict], bos: str, eos: str, tools: list[dict] | None = None) -> str:
        raise NotImplementedError

    def with_context(self, context: dict) -> ChatFormat:
        """The format with extra template variables (`chat_template_kwargs`); a built-in format has none to take."""
        return self


class CodeShellFormat(ChatFormat):
    def render(self, messages, bos, eos, tools=None):
        out = []
        for m in messages:
            if m["role"] in ("user", "system"):
                out.append(f"## human:{m['content']}|<end>|")
            else:
                out.append(f"## assistant: {m['content']}|<end>|")
        return "".join(out) + "## assistant:"


class Llama2Format(ChatFormat):
    def render(self, messages, bos, eos, tools=None):
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
    def render(self, messages, bos, eos, tools=None):
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + "<|im_start|>assistant\n"


class GemmaFormat(ChatFormat):
    """Gemma's turns: <start_of_turn>user / model ... <end_of_turn>; a system message opens the first user turn."""

    def render(self, messages, bos, eos, tools=None):
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

    def render(self, messages, bos, eos, tools=None):
        body = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
        return body + "<|assistant|>\n"


class JinjaFormat(ChatFormat):
    """A model's own template, rendered as transformers' `apply_chat_template` renders it: the same sandboxed
    environment (trim_blocks, lstrip_blocks, loop controls), `raise_exception`, `strftime_now`, `tojson` with its
    arguments, `namespace` and `dict`, and the `tools` list given to the template as it is."""

    def __init__(self, template: str, stop: tuple[str, ...]):
        object.__setattr__(self, "name", "jinja")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "source", template)
        object.__setattr__(self, "context", {})  # extra template variables (chat_template_kwargs, enable_thinking)
        from jinja2 import TemplateError, meta
        env = _environment()
        try:
            object.__setattr__(self, "_template", env.from_string(template))
            object.__setattr__(self, "supports_tools", "tools" in meta.find_undeclared_variables(env.parse(template)))
        except TemplateError as e:
            raise UserError(f"the chat template does not parse: {e}") from None

    def with_context(self, context):
        out = copy.copy(self)
        object.__setattr__(out, "context", {**self.context, **context})
        return out

    def render(self, messages, bos, eos, tools=None, add_generation_prompt=True):
        from jinja2 import TemplateError
        try:
            return self._template.render(**{**self.context, "messages": messages, "tools": tools, "documents": None,
                                            "add_generation_prompt": add_generation_prompt, "bos_token": bos,
                                            "eos_token": eos})
        except (TemplateError, TypeError, ValueError, LookupError, AttributeError) as e:  # the template's own fault
            raise UserError(f"the chat template failed: {type(e).__name__}: {e}") from None


def _environment():
    """transformers' chat-template environment (utils/chat_template_utils.py, _compile_jinja_template)."""
    import json
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # jinja2's own signature trick: `namespace(self=...)` works
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for key in attrs:
                TemplateNamespace._check_name(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, key, value):
            TemplateNamespace._check_name(key)
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check_name(key):
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template cannot set {key!r} on a namespace")

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers marks the assistant's tokens with it): its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env


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


def prompt_text(fmt: ChatFormat, tok, messages: list[dict], tools: list[dict] | None = None) -> str:
    """A conversation rendered with `fmt` (and the `tools` it shows), ready for the assistant's turn, with the
    tokenizer's BOS and EOS texts."""
    bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
    eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
    return fmt.render(messages, bos, eos, tools)


def prompt_tokens(fmt: ChatFormat, tok, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """prompt_text tokenized (special tokens parsed); BOS is added unless the template already wrote it."""
    bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
    prompt = prompt_text(fmt, tok, messages, tools)
    return tok.encode(prompt, add_bos=tok.add_bos and not (bos and prompt.startswith(bos)), parse_special=True)
