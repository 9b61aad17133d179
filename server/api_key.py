"""`--api-key`: the bytes a client must send after `Authorization: Bearer `."""
from __future__ import annotations

import os

from common.errors import UserError


def api_key_bytes(key: str) -> bytes:
    """The key as the bytes given on the command line: Python decodes argv with `surrogateescape`, so a key that is
    not UTF-8 (`--api-key $'k\\xff'`) holds lone surrogates, and os.fsencode gives its bytes back — those a client
    sends. Refused with one line: an empty key, text with no bytes form (a lone surrogate from the Python API), and
    what an HTTP header cannot carry as it is (control characters, a space or tab at either end: stripped from the
    header's value)."""
    if not key.strip():
        raise UserError("--api-key must not be empty")
    try:
        raw = os.fsencode(key)
    except UnicodeEncodeError as e:
        raise UserError(f"--api-key cannot be sent in an HTTP header: character {e.object[e.start]!r} at position "
                        f"{e.start} is a lone surrogate, not text") from None
    bad = next((i for i, b in enumerate(raw) if (b < 0x20 and b != 0x09) or b == 0x7F), None)
    if bad is not None:
        raise UserError(f"--api-key cannot be sent in an HTTP header: it contains the control character "
                        f"{raw[bad]:#04x} (byte {bad})")
    if raw.strip(b" \t") != raw:
        raise UserError("--api-key cannot be sent in an HTTP header: it begins or ends with a space or tab, which "
                        "HTTP strips from a header's value")
    return raw
