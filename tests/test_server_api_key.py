"""`toolkit serve --api-key` with a key that is not plain ASCII (issue 18): the key given as bytes that are not UTF-8
reaches Python as lone surrogates; it is compared as those bytes, byte for byte, with what a client sends (a raw
HTTP request, as curl would send it); a key no header can carry is one line at startup, never a 500 per request."""
from __future__ import annotations

import os
import socket
import subprocess
from urllib.parse import urlsplit

import pytest

from common.errors import UserError
from server.api_key import api_key_bytes
from tests.helpers import REPO, TOOLKIT
from tests.test_server import _serve, _stop

RAW_KEY = b"k\xffey\xc3\xa9"   # not UTF-8 (\xff), then UTF-8 (é)


@pytest.fixture(scope="module")
def server(stories260k_f32, tmp_path_factory):
    srv = _serve(stories260k_f32, tmp_path_factory.mktemp("api-key") / "stderr.txt", "--api-key",
                 os.fsdecode(RAW_KEY))   # as the shell passes $'k\xffey\xc3\xa9'
    yield srv
    _stop(srv)


def _status(srv, path: str, authorization: bytes | None) -> int:
    """A GET sent as raw bytes (httpx would refuse a header that is not ASCII); the answer's status."""
    u = urlsplit(srv.url)
    head = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if authorization is not None:
        head += b"Authorization: " + authorization + b"\r\n"
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(head + b"\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_key_that_is_not_utf8_is_compared_as_its_bytes(server):
    assert _status(server, "/health", None) == 200
    assert _status(server, "/v1/models", b"Bearer " + RAW_KEY) == 200
    assert _status(server, "/v1/models", b"Bearer " + RAW_KEY[:-1]) == 401
    assert _status(server, "/v1/models", b"Bearer " + RAW_KEY.decode("latin-1").encode()) == 401  # not re-encoded
    assert _status(server, "/v1/models", None) == 401


@pytest.mark.parametrize("key, message", [("a\nb", "control character 0x0a"), (" key", "begins or ends with a space"),
                                          ("key\x7f", "control character 0x7f"), ("  ", "must not be empty")])
def test_key_no_header_can_carry_is_one_line_at_startup(stories260k_f32, key, message):
    p = subprocess.run([*TOOLKIT, "serve", "-m", str(stories260k_f32), "--port", "0", "--api-key", key],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_key_with_no_bytes_form():
    """A lone surrogate outside surrogateescape's range cannot come from a command line, only from Python: refused
    when the app is configured, not on its first request."""
    from server.app import AppConfig
    with pytest.raises(UserError, match="lone surrogate"):
        api_key_bytes("a\ud800b")
    with pytest.raises(UserError, match="lone surrogate"):
        AppConfig(name="m", api_key="a\ud800b")
    assert api_key_bytes(os.fsdecode(RAW_KEY)) == RAW_KEY and api_key_bytes("sk-1") == b"sk-1"
