"""Pure checks the server and runner share: paths, addresses, queue and policy files."""

from __future__ import annotations

import json

import pytest

from dask_kotta.errors import ConfigError, UnsafePathError
from dask_kotta.netcheck import is_local_name, literal_ip, refusal
from dask_kotta.paths import safe_relpath
from dask_kotta.server.policy import load_policy
from dask_kotta.server.queues import load_queues
from dask_kotta.urls import has_userinfo


@pytest.mark.parametrize(
    "name, normal",
    [("a.txt", "a.txt"), (" sub/b.csv ", "sub/b.csv"), ("./c", "c"), ("d//e/./f", "d/e/f"),
     ("..a/b..", "..a/b.."), (".hidden", ".hidden")],
)  # fmt: skip
def test_safe_relpath_normalises(name, normal):
    assert safe_relpath(name) == normal


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("", "must be a non-empty relative path"),
        (None, "must be a non-empty relative path"),
        (".", "escapes the job's directory"),
        ("./", "escapes the job's directory"),
        ("a/../../x", "escapes the job's directory"),
        ("a/..", "escapes the job's directory"),
        ("/abs", "is absolute"),
        ("~/x", "is absolute"),
        ("a\\b", "contains a NUL or backslash"),
        ("x\x00", "contains a NUL or backslash"),
    ],
)
def test_safe_relpath_refuses_naming_the_what(name, fragment):
    with pytest.raises(UnsafePathError) as e:
        safe_relpath(name, "output")
    assert str(e.value).startswith("output ") and fragment in str(e.value)


@pytest.mark.parametrize(
    "host, refused", [("127.0.0.1", True), ("0x7f.1", True), ("10.1.2.3", True), ("8.8.8.8", False)]
)
def test_literal_ips_in_any_form(host, refused):
    assert (refusal(literal_ip(host)) is not None) is refused


def test_local_names_and_user_info():
    assert is_local_name("LOCALHOST.") and is_local_name("a.localhost")
    assert not is_local_name("localhost.example.com")
    assert has_userinfo("https://u:p@h/a") and not has_userinfo("https://h/a@b")


def write(tmp_path, value) -> str:
    path = tmp_path / "queues.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


def test_queue_file(tmp_path):
    queues = load_queues(
        write(
            tmp_path,
            {
                "Small": {"vcpus": 2, "memory": "4GB", "max_walltime_min": 30},
                "Secure": {
                    "memory": 2**30,
                    "network": False,
                    "max_processes": 64,
                    "limit_cpu": True,
                    "env": {"A": 1},
                    "mounts": ["/data/", "/s:rw"],
                },
            },  # fmt: skip
        )
    )
    small, secure = queues["Small"], queues["Secure"]
    assert (small.vcpus, small.memory_bytes, small.max_walltime_min) == (2, 4 * 10**9, 30.0)
    assert (small.network, small.max_processes, small.limit_cpu) == (True, None, False)
    assert (secure.vcpus, secure.max_walltime_min) == (1, 24 * 60)
    assert secure.sandbox() == {
        "network": False, "max_processes": 64, "limit_cpu": True, "env": {"A": "1"},
        "mounts": [{"path": "/data", "writable": False}, {"path": "/s", "writable": True}],
    }  # fmt: skip
    assert secure.to_json()["mounts"] == ["/data", "/s:rw"]


def test_default_queues_are_test_and_prod():
    assert list(load_queues(None)) == ["Test", "Prod"]


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("{", "cannot read queue config"),
        ({}, "defines no queue"),
        ({"Q": {"vcpus": 1}}, "'memory'"),
        ({"Q": {"memory": "lots"}}, "cannot read queue config"),
        ({"Q": {"memory": "1GB", "network": "no"}}, "network must be true or false, not 'no'"),
        ({"Q": {"memory": "1GB", "mounts": ["data"]}}, "must be an absolute path"),
        ({"Q": {"memory": "1GB", "mounts": ["/d:rwx"]}}, "must be an absolute path"),
        ({"Q": {"memory": "1GB", "mounts": [7]}}, "a mount is a string"),
    ],
)
def test_bad_queue_files_name_the_file_and_the_problem(tmp_path, value, fragment):
    path = write(tmp_path, value)
    with pytest.raises(ConfigError) as e:
        load_queues(path)
    assert path in str(e.value) and fragment in str(e.value)


def test_a_missing_queue_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read queue config"):
        load_queues(tmp_path / "nope.json")


def test_policy_file(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps({"allow_input_networks": ["10.0.0.0/8"], "s3_grants": {"alice": ["s3://b/in/"]}})
    )
    policy = load_policy(path)
    assert policy.networks() == ["10.0.0.0/8"]
    assert refusal(literal_ip("10.2.3.4"), policy.allow_input_networks) is None
    assert policy.grant_for("alice", "b", "in/x.csv").text == "s3://b/in/"
    assert policy.grant_for("alice", "b", "out/x.csv") is None
    assert policy.grant_for("bob", "b", "in/x.csv") is None
    assert load_policy(None).s3_grants == {} and load_policy("").networks() == []
    with pytest.raises(ConfigError, match="cannot read it"):
        load_policy(tmp_path / "missing.json")


@pytest.mark.parametrize("command", ["up", "server"])
@pytest.mark.parametrize(
    "value, error", [("1", "must be at least 3 s"), ("soon", "'soon' is not a valid float")]
)
def test_a_lease_too_short_or_not_a_number_stops_the_service_before_it_starts(
    command, value, error, tmp_path
):
    from click.testing import CliRunner

    from dask_kotta.cli import main

    r = CliRunner().invoke(main, [command, "--lease", value, "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 2 and error in r.output and "--lease" in r.output, r.output
    assert not (tmp_path / "d").exists()  # nothing started, nothing made


def test_the_lease_reaches_the_server_config(tmp_path):
    import click

    from dask_kotta.cli.service import _config, _lease

    with click.Context(click.Command("server")) as ctx:
        _lease(ctx, None, 7.5)
        config = _config(tmp_path, 1, "127.0.0.1", None, None, None, "", None, "1MiB")
    assert config.lease_s == 7.5


@pytest.mark.parametrize(
    "args, says",
    [
        (["up", "--lease", "1"], "--lease': must be at least 3 s (3 runner heartbeats)"),
        (["up", "--keep", "-1"], "--keep': must be 0 (keep every job) or more days"),
        (["server", "--max-keep", "0"], "--max-keep': must be a number of days > 0"),
        (["up", "--max-pending", "-3"], "--max-pending': must be a number of jobs >= 0"),
        (["token", "bob", "--expires", "soon"], "'soon' is not a duration like 30d, 12h"),
        (["token", "bob", "--expires", "0d"], "'0d' is not a duration"),
        (["token"], "give NAME (the user to make a token for), --list or --revoke ID"),
    ],
)
def test_service_options_are_checked_before_anything_starts(tmp_path, monkeypatch, args, says):
    from click.testing import CliRunner

    from dask_kotta.cli import main

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and says in r.output, r.output
    assert list(tmp_path.iterdir()) == [], "nothing is made"
