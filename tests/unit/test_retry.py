"""The client's retry policy: backoff, window, Retry-After, which failures it retries.

A fake clock that the policy's ``sleep`` advances: nothing sleeps for real.
"""

from __future__ import annotations

import email.utils

import pytest

from dask_kotta.client.retry import (
    WINDOW_ENV,
    RetryPolicy,
    is_transient,
    parse_retry_after,
    window_s,
)
from dask_kotta.errors import (
    APIError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ServerUnavailableError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


def policy(clock: Clock, window: float = 60.0, rand: float = 1.0) -> RetryPolicy:
    return RetryPolicy(window, clock=clock.time, sleep=clock.sleep, rand=lambda: rand)


def failing(clock: Clock, errors: list[Exception], cost: float = 0.0, value: str = "ok"):
    """An attempt that raises ``errors`` one by one (each taking ``cost`` s), then returns."""
    calls: list[float] = []

    def attempt() -> str:
        calls.append(clock.now)
        clock.now += cost
        if errors:
            raise errors.pop(0)
        return value

    return attempt, calls


def test_backoff_doubles_up_to_the_cap_with_jitter_between_half_and_all():
    c = Clock()
    top = policy(c, rand=1.0)
    assert [top.backoff(n) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    bottom = policy(c, rand=0.0)
    assert [bottom.backoff(n) for n in range(7)] == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert top.backoff(10_000) == 2.0  # no overflow however long it goes on


def test_retry_after_lengthens_a_pause_but_never_shortens_it():
    p = policy(Clock(), rand=1.0)
    assert p.pause(0, 5.0) == 5.0
    assert p.pause(6, 0.5) == 2.0
    assert p.pause(6, None) == 2.0


def test_transient_failures_are_retried_until_the_call_succeeds():
    c = Clock()
    down = ServerUnavailableError("cannot reach the Kotta server at http://x: refused")
    attempt, calls = failing(c, [down, down, APIError("bad gateway", 502), down])
    assert policy(c).run(attempt) == "ok"
    assert len(calls) == 5
    assert c.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_other_errors_are_raised_at_once():
    for err in (NotFoundError("no job"), ConflictError("ended"), APIError("boom", 500)):
        c = Clock()
        attempt, calls = failing(c, [err])
        with pytest.raises(type(err)):
            policy(c).run(attempt)
        assert len(calls) == 1 and c.sleeps == []


def test_a_server_that_stays_away_fails_the_call_when_the_window_closes():
    c = Clock()
    down = ServerUnavailableError("cannot reach the Kotta server at http://x: refused")
    attempt, calls = failing(c, [down] * 1000, cost=0.01)
    start = c.now
    with pytest.raises(
        ServerUnavailableError, match=r"http://x: refused \(kept trying for 10\.0 s\)"
    ):
        policy(c, window=10).run(attempt)
    # The window counts from the first failure; the last pause ends exactly when it closes
    # and one more attempt is made then.
    first_failure = calls[0] + 0.01
    assert c.now == pytest.approx(first_failure + 10 + 0.01)
    assert calls[-1] == pytest.approx(first_failure + 10)
    assert max(c.sleeps) == 2.0
    assert c.now - start < 10.1


def test_a_503_after_the_window_keeps_its_status_and_detail():
    c = Clock()
    busy = APIError("the job database is unavailable: locked", 503)
    busy.retry_after = 3.0
    attempt, _ = failing(c, [busy] * 100)
    with pytest.raises(APIError) as info:
        policy(c, window=7).run(attempt)
    assert info.value.status == 503
    assert info.value.detail == "the job database is unavailable: locked (kept trying for 7.0 s)"
    assert c.sleeps == [3.0, 3.0, 1.0]  # the server's pace, cut to the window


def test_window_zero_turns_retrying_off():
    c = Clock()
    down = ServerUnavailableError("down")
    attempt, calls = failing(c, [down])
    with pytest.raises(ServerUnavailableError, match="^down$"):
        policy(c, window=0).run(attempt)
    assert len(calls) == 1


def test_window_comes_from_the_argument_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv(WINDOW_ENV, raising=False)
    assert window_s() == 60.0
    monkeypatch.setenv(WINDOW_ENV, "7.5")
    assert window_s() == 7.5
    assert window_s(2) == 2.0
    assert window_s(0) == 0.0
    monkeypatch.setenv(WINDOW_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{WINDOW_ENV} must be a number"):
        window_s()
    with pytest.raises(ConfigError, match="retry_window must be >= 0"):
        window_s(-1)


def test_is_transient():
    assert is_transient(ServerUnavailableError("x"))
    assert all(is_transient(APIError("x", s)) for s in (502, 503, 504))
    assert not any(is_transient(APIError("x", s)) for s in (400, 404, 409, 500))
    assert not is_transient(ValueError("x"))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("-3", None),
        ("1.5", None),  # delta-seconds is an integer
        ("soon", None),
    ],
)
def test_retry_after_in_seconds(header, seconds):
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date():
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(30.0)
    earlier = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0


def test_an_answer_broken_off_midway_is_a_transient_failure():
    """A server killed while it sends an answer: requests raises ChunkedEncodingError, which
    the client retries like a refused connection (test_ride_through meets it for real)."""
    import json
    import socket
    import threading

    from dask_kotta import Kotta

    body = b'{"name": "u"}'
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve(answers: str) -> None:  # "b": broken off, "o": whole
            for a in answers:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    if a == "b":  # promises 643 bytes, sends none, and goes away
                        conn.sendall(head + b"Content-Length: 643\r\n\r\n")
                    else:
                        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

        # whoami; a GET broken off three times, then answered; a POST broken off
        server = threading.Thread(target=serve, args=("obbbob",), daemon=True)
        server.start()
        konn = Kotta(json.dumps({"url": f"http://127.0.0.1:{port}", "token": "t"}))
        try:
            assert konn.request("GET", "/api/v1/anything").json() == {"name": "u"}
            with pytest.raises(ServerUnavailableError, match="broke off its answer"):
                konn.request("POST", "/api/v1/anything", retry=False)
        finally:
            konn.close()
            server.join(10)
