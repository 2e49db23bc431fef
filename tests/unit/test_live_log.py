"""The bounded live log (server/logs.py) and the runner's reading of a growing file
(runner/live_logs.py): offsets, repeats, cuts, bounds."""

from __future__ import annotations

import os

from dask_kotta import defaults as d
from dask_kotta.runner.live_logs import StreamTail
from dask_kotta.server.logs import LiveLog, cut_notice


def small(**kw) -> LiveLog:
    return LiveLog(head_max=10, tail_max=20, **kw)


def test_bytes_in_order_are_read_back_from_any_offset():
    log = small()
    log.append(0, b"hello ")
    log.append(6, b"world\n")
    assert log.size == 12
    assert log.read(0) == b"hello world\n"
    assert log.read(6) == b"world\n"
    assert log.read(12) == b""


def test_a_repeated_or_overlapping_chunk_is_taken_once():
    log = small()
    log.append(0, b"abcdef")
    log.append(0, b"abcdef")  # a retry of the same send
    log.append(3, b"defgh")  # overlaps what is held
    assert log.size == 8 and log.read(0) == b"abcdefgh"


def test_past_the_bound_the_head_and_tail_stay_and_the_cut_is_said():
    log = small()
    data = bytes(range(65, 65 + 26)) * 4  # 104 bytes, past 10 + 20
    for i in range(0, len(data), 7):
        log.append(i, data[i : i + 7])
    assert log.size == len(data)
    assert len(log.head) == 10 and len(log.tail) == 20
    assert len(log.encode()) < 10 + 20 + 200  # held: the bound, and a line of metadata
    got = log.read(0)
    assert got.startswith(data[:10]) and got.endswith(data[-20:])
    assert cut_notice(len(data) - 30) in got
    # A reader inside the cut: told how much it missed, then the tail.
    assert log.read(50) == cut_notice(len(data) - 20 - 50) + data[-20:]
    # A reader within the tail gets plain bytes.
    assert log.read(len(data) - 5) == data[-5:]


def test_a_gap_from_the_runner_is_a_cut():
    log = small()
    log.append(0, b"0123456789abc")  # head full, "abc" starts the tail
    log.append(1000, b"tail")  # the runner skipped 987 bytes
    assert log.size == 1004
    assert log.read(0) == b"0123456789" + cut_notice(990) + b"tail"


def test_round_trip_through_the_stored_form():
    log = small(attempt=3)
    log.append(0, b"x" * 50)
    log.final = True
    again = LiveLog.decode(log.encode())
    assert (again.attempt, again.size, again.final) == (3, 50, True)
    assert again.head + again.tail == log.head + log.tail and again.tail_start == log.tail_start


def test_the_runner_reads_new_bytes_and_skips_what_would_be_cut(tmp_path):
    f = tmp_path / "STDOUT.txt"
    f.write_bytes(b"")
    tail = StreamTail(tmp_path, "STDOUT.txt")
    assert tail.chunk() is None
    f.write_bytes(b"first\n")
    assert tail.chunk() == (0, b"first\n")
    tail.sent = 6
    assert tail.chunk() is None
    big = d.LIVE_LOG_HEAD_BYTES + 3 * d.LIVE_LOG_TAIL_BYTES
    with open(f, "ab") as out:
        out.write(os.urandom(big))
    size = 6 + big
    offset, data = tail.chunk()  # the rest of the head first, at most a tail's worth
    assert offset == 6 and len(data) == d.LIVE_LOG_TAIL_BYTES
    tail.sent = offset + len(data)
    offset, data = tail.chunk()  # then only the last tail's worth, not the middle
    assert offset == size - d.LIVE_LOG_TAIL_BYTES and len(data) == d.LIVE_LOG_TAIL_BYTES
    tail.close()


def test_the_runner_never_follows_a_symlink_the_job_left(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("not the job's")
    work = tmp_path / "work"
    work.mkdir()
    (work / "STDOUT.txt").symlink_to(secret)
    assert StreamTail(work, "STDOUT.txt").chunk() is None
