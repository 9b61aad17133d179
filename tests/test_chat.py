"""The built-in chat formats against llama.cpp's own (llama_chat_apply_template of llama-cpp-python 0.3.36, by the
name llama.cpp gives each format) and against the models' own Jinja templates (../shared/fixtures/chat-templates): the
same text for a conversation of several turns; and every template of the fixtures rendered as transformers'
`apply_chat_template` renders it (conversations without tools here; with tools and tool results in test_tools)."""
from __future__ import annotations

import ctypes
import os

import pytest

from common.errors import UserError
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


# -- every template of the fixtures against transformers' apply_chat_template ----------------------------------------
# Conversations without tools (those with tools and tool results: tests/test_tools.py, for every template that shows
# tools); a thinking template also with `enable_thinking` given (transformers passes it to the template as is).
PLAIN = {"system": CONVERSATION, "no-system": CONVERSATION[1:], "one-turn": [CONVERSATION[1]],
         "reasoning": [CONVERSATION[1], {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
                       CONVERSATION[3]]}


def fixture_templates() -> list[str]:
    from tests.conftest import SHARED
    folder = SHARED / "chat-templates"
    return sorted(f.name for f in folder.glob("*.jinja")) if folder.is_dir() else ["Qwen-Qwen3-0.6B.jinja"]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return rendering_tokenizer()


def rendering_tokenizer():
    """A transformers tokenizer whose only role is apply_chat_template (BOS/EOS texts <s> and </s>)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("file", fixture_templates())
def test_every_template_renders_as_transformers(shared_fixtures, hf_tokenizer, file):
    """Character for character, or both refuse the conversation (the template raises: no system role, ...)."""
    text = (shared_fixtures / "chat-templates" / file).read_text()
    kwargs = [{}] + ([{"enable_thinking": True}, {"enable_thinking": False}] if "enable_thinking" in text else [])
    rendered = 0
    for name, messages in PLAIN.items():
        for extra in kwargs:
            try:
                expected = hf_tokenizer.apply_chat_template(messages, chat_template=text, tokenize=False,
                                                            add_generation_prompt=True, **extra)
            except Exception:  # noqa: BLE001 — the template's own refusal: ours must refuse too
                with pytest.raises(UserError, match="chat template failed"):
                    JinjaFormat(text, ()).with_context(extra).render(messages, "<s>", "</s>")
                continue
            assert JinjaFormat(text, ()).with_context(extra).render(messages, "<s>", "</s>") == expected, (name, extra)
            rendered += 1
    # the templates that refuse plain chats want tools (Hermes/Command R tool-use, firefunction) or no system turn
    assert rendered or file in NEED_TOOLS, file


NEED_TOOLS = {"CohereForAI-c4ai-command-r-plus-tool_use.jinja", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
              "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "fireworks-ai-llama-3-firefunction-v2.jinja"}
