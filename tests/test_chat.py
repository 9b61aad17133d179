"""The built-in chat formats against llama.cpp's own (llama_chat_apply_template of llama-cpp-python 0.3.36, by the
name llama.cpp gives each format) and against the models' own Jinja templates (../shared/fixtures/chat-templates): the
same text for a conversation of several turns."""
from __future__ import annotations

import ctypes
import os

import pytest

from runtime.chat import BUILTIN, JinjaFormat

llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What colour is the sun?"}]
# our name → llama.cpp's name of the same format. Llama-2's is Meta's reference format (a space on either side of an
# answer: "[/INST] Hello! </s>"), which llama.cpp's llama2 variants drop.
LLAMA_CPP_NAMES = {"chatml": "chatml", "gemma": "gemma", "phi3": "phi3"}
# our name → a model's own template of that format, and whether it takes a system message
MODEL_TEMPLATES = {"chatml": ("Qwen-Qwen2.5-7B-Instruct.jinja", True), "gemma": ("google-gemma-2-2b-it.jinja", False),
                   "phi3": ("microsoft-Phi-3.5-mini-instruct.jinja", True)}


def llama_cpp_render(name: str, messages: list[dict]) -> str:
    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        keep += [m["role"].encode(), m["content"].encode()]
        chat[i].role, chat[i].content = keep[-2], keep[-1]
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), True, buf, len(buf))
    assert 0 < n < len(buf), name
    return buf.raw[:n].decode()


@pytest.mark.parametrize("name", sorted(LLAMA_CPP_NAMES))
def test_builtin_formats_are_llama_cpps(name):
    ours = BUILTIN[name].render(CONVERSATION, "", "</s>")
    assert ours == llama_cpp_render(LLAMA_CPP_NAMES[name], CONVERSATION)


@pytest.mark.parametrize("name", sorted(MODEL_TEMPLATES))
def test_builtin_formats_are_the_models_templates(shared_fixtures, name):
    file, system = MODEL_TEMPLATES[name]
    messages = CONVERSATION if system else CONVERSATION[1:]
    template = JinjaFormat((shared_fixtures / "chat-templates" / file).read_text(), ())
    assert BUILTIN[name].render(messages, "<bos>", "<eos>") == template.render(messages, "<bos>", "<eos>")


def test_every_builtin_format_is_compared():
    assert set(BUILTIN) - set(LLAMA_CPP_NAMES) == {"codeshell", "llama-2"}  # neither has its llama.cpp name
