"""Download links' signatures (``server/links.py``), in-process: what opens and what not.

The links are opened over HTTP, with no token, in ``tests/integration/test_outputs.py``.
"""

from __future__ import annotations

import time

import pytest

from dask_kotta.errors import ForbiddenError
from dask_kotta.server.links import sign, verify

KEY = bytes(range(32))


def test_a_signed_link_names_its_user_job_and_output_until_it_expires():
    expires = int(time.time()) + 60
    signed = sign(KEY, 7, "0123abcd", "sub/ü b.csv", expires)
    assert verify(KEY, signed, time.time()) == (7, "0123abcd", "sub/ü b.csv", expires)
    with pytest.raises(ForbiddenError, match="expired"):
        verify(KEY, signed, expires)
    with pytest.raises(ForbiddenError, match="not valid"):
        verify(bytes(32), signed, time.time())  # another service's key


def test_every_changed_character_is_refused():
    signed = sign(KEY, 1, "job", "a.csv", int(time.time()) + 60)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(signed):
        if ch == ".":
            continue
        # The next letter: at the end of the signature, base64's spare bits included.
        other = alphabet[(alphabet.index(ch) + 1) % len(alphabet)]
        with pytest.raises(ForbiddenError, match="not valid"):
            verify(KEY, signed[:i] + other + signed[i + 1 :], time.time())
    for bad in ("", ".", signed + "=", signed.split(".")[0], "é." + signed.split(".")[1]):
        with pytest.raises(ForbiddenError):
            verify(KEY, bad, time.time())
