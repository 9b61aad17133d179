"""Text the user hands over — a prompt file, a template or grammar file, a command-line argument, a line of input — is
UTF-8, or it is refused with one line naming the first byte that is not (never a UnicodeError deep inside)."""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError


def read_text(path: Path | str, what: str) -> str:
    """The text of the file at `path` (`what` it is, for the message: "prompt file", "grammar file", ...)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def require_utf8(text: str, what: str) -> str:
    """`text` itself when it is Unicode. Python keeps bytes of an argument or an input line that were not UTF-8 as
    lone surrogates (U+DC80-U+DCFF); those, and any other lone surrogate, are refused naming the first."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise UserError(f"{what} is not valid UTF-8 ({bad} at character {e.start})") from None
    return text
