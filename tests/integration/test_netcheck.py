"""The address classifier and the S3 grants of the policy: pure functions, no service."""

from __future__ import annotations

import pytest

from dask_kotta.errors import ConfigError
from dask_kotta.netcheck import literal_ip, parse_networks, refusal
from dask_kotta.server.policy import load_policy, parse_policy
from dask_kotta.urls import shown_url


@pytest.mark.parametrize(
    "host, why",
    [
        ("127.0.0.1", "loopback"),
        ("2130706433", "loopback"),
        ("0x7f000001", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("[::1]", "loopback"),
        ("::ffff:127.0.0.1", "embedding 127.0.0.1, a loopback"),
        ("64:ff9b::a9fe:a9fe", "embedding 169.254.169.254, a link-local"),
        ("2002:0a00:0001::", "embedding 10.0.0.1, a private"),
        ("::7f00:1", "embedding 127.0.0.1"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "non-global"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),
    ],
)
def test_addresses_inside_are_refused(host, why):
    ip = literal_ip(host)
    assert ip is not None
    assert why in (refusal(ip) or "")


@pytest.mark.parametrize("host", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"])
def test_global_addresses_pass(host):
    assert refusal(literal_ip(host)) is None


def test_names_are_not_literals():
    for host in ("example.com", "1e1", "deadbeef", "127.0.0.1.example.com"):
        assert literal_ip(host) is None


def test_allowed_networks():
    allowed = parse_networks(["127.0.0.2/32", "10.0.0.0/8"])
    assert refusal(literal_ip("127.0.0.2"), allowed) is None
    assert refusal(literal_ip("::ffff:127.0.0.2"), allowed) is None
    assert refusal(literal_ip("10.9.8.7"), allowed) is None
    assert "loopback" in refusal(literal_ip("127.0.0.1"), allowed)
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        parse_networks(["10.0.0.0/33"])


def test_shown_url_drops_user_info_and_query():
    assert shown_url("https://u:pw@h.example:8/a/b.csv?X-Amz-Signature=1#f") == (
        "https://***@h.example:8/a/b.csv"
    )
    assert shown_url("s3://b/k.csv") == "s3://b/k.csv"


def test_grants_match_on_path_boundaries():
    p = parse_policy(
        {
            "s3_grants": {
                "alice": ["s3://b/dir/", "s3://b/obj", "s3://c", "s3://d/pre*"],
                "*": ["s3://public/"],
            }
        }
    )
    ok = [("b", "dir/x.csv"), ("b", "dir/sub/y"), ("b", "obj"), ("b", "obj/z"), ("c", "any/key"),
          ("d", "prefix-other"), ("public", "p.csv")]  # fmt: skip
    for bucket, key in ok:
        assert p.grant_for("alice", bucket, key) is not None, (bucket, key)
    no = [("b", "dir-other/x"), ("b", "dirx"), ("b", "object"), ("B", "dir/x"), ("e", "x"),
          ("b", "dir/../secret/x"), ("b", "dir/./x"), ("d", "pr")]  # fmt: skip
    for bucket, key in no:
        assert p.grant_for("alice", bucket, key) is None, (bucket, key)
    assert p.grant_for("bob", "b", "dir/x.csv") is None
    assert p.grant_for("bob", "public", "p.csv") is not None


@pytest.mark.parametrize(
    "text, why",
    [
        ("[1, 2]", "must be a JSON object"),
        ("{nope", "not valid JSON"),
        ('{"allow_input_networks": "10.0.0.0/8"}', "must be a list"),
        ('{"allow_input_networks": ["nonsense"]}', "'nonsense' is not a network"),
        ('{"s3_grants": {"a": ["http://x/"]}}', "not an s3://BUCKET/PREFIX grant"),
        ('{"s3_grants": {"a": ["s3://b/../c/"]}}', "'..'"),
        ('{"grants": {}}', "unknown key(s) grants"),
    ],
)
def test_malformed_policy_files_name_the_file_and_the_problem(tmp_path, text, why):
    path = tmp_path / "policy.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_policy(path)
    assert str(path) in str(e.value) and why in str(e.value)
    assert "\n" not in str(e.value)
