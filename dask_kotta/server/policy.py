"""The operator's policy: networks inputs may reach, and users' S3 read and write grants.

``dask-kotta up|server --policy FILE`` (or ``DASK_KOTTA_POLICY``), a JSON object::

    {"allow_input_networks": ["10.0.0.0/8", "192.168.1.7/32"],
     "s3_grants": {"alice": ["s3://bucket/prefix/", "s3://other-bucket/"],
                   "*": ["s3://public-data/"]},
     "s3_write_grants": {"alice": ["s3://bucket/results/"]}}

- ``allow_input_networks``: CIDRs that ``http(s)`` inputs may reach although
  they are loopback, link-local or private (see :mod:`dask_kotta.netcheck`).
- ``s3_grants``: by user name (``"*"``: every user), the ``s3://`` places
  outside the service's store that the user may stage inputs from. The
  server presigns a GET for each such input with its own S3 credentials
  (boto3's standard chain); workers hold none. ``s3://bucket/`` or
  ``s3://bucket`` grants the whole bucket, ``s3://bucket/dir/`` everything
  under ``dir/``, ``s3://bucket/dir`` the object ``dir`` and everything under
  ``dir/`` (not ``dir-other``), and ``s3://bucket/pre*`` every key that starts
  with ``pre``.
- ``s3_write_grants`` (same form): the places a user's jobs may *write* to,
  as declared ``destinations`` (``dask_kotta.dataframe.to_parquet``). Reading
  and writing are granted apart: a read grant never lets a job write, nor a
  write grant read. The server presigns one PUT per declared destination, for
  the runner, after the job's process has ended (``server/destinations.py``).

Without a policy, nothing is allowed beyond global addresses and the store; a
policy file of an earlier version (no ``s3_write_grants``) grants no writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..netcheck import IPNetwork, parse_networks

_KEYS = {"allow_input_networks", "s3_grants", "s3_write_grants"}


def key_is_plain(key: str) -> bool:
    """False for keys with ``.`` or ``..`` segments: S3 servers and HTTP clients differ on them."""
    return not any(seg in (".", "..") for seg in key.split("/"))


@dataclass(frozen=True)
class Grant:
    """One granted place: a bucket and a key prefix (``exact``: the prefix is also an object)."""

    bucket: str
    prefix: str  # "" for the whole bucket; ends with "/" for a directory
    raw: bool = False  # "pre*": any key starting with prefix
    text: str = ""

    def covers(self, bucket: str, key: str) -> bool:
        if bucket != self.bucket or not key:
            return False
        if self.raw or not self.prefix or self.prefix.endswith("/"):
            return key.startswith(self.prefix)
        return key == self.prefix or key.startswith(self.prefix + "/")

    @classmethod
    def parse(cls, text: Any) -> Grant:
        if not isinstance(text, str) or not text.startswith("s3://"):
            raise ValueError(f"{text!r} is not an s3://BUCKET/PREFIX grant")
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket or "?" in text or "#" in text:
            raise ValueError(f"{text!r} is not an s3://BUCKET/PREFIX grant")
        raw = prefix.endswith("*")
        prefix = prefix.removesuffix("*")
        if "*" in prefix or not key_is_plain(prefix):
            raise ValueError(
                f"{text!r}: a grant may end with '*' but has no other '*', '.' or '..' parts"
            )
        return cls(bucket, prefix, raw, text)


@dataclass(frozen=True)
class Policy:
    allow_input_networks: tuple[IPNetwork, ...] = ()
    s3_grants: dict[str, tuple[Grant, ...]] = field(default_factory=dict)
    source: str = ""
    #: Places users' jobs may write to (``s3_write_grants``); apart from the read grants.
    s3_write_grants: dict[str, tuple[Grant, ...]] = field(default_factory=dict)

    def grant_for(self, user: str, bucket: str, key: str) -> Grant | None:
        """The grant that lets ``user`` read ``s3://bucket/key``, or None."""
        return _covering(self.s3_grants, user, bucket, key)

    def write_grant_for(self, user: str, bucket: str, key: str) -> Grant | None:
        """The grant that lets ``user``'s jobs write ``s3://bucket/key``, or None.

        Only ``s3_write_grants`` count: a read grant of the same place does not.
        """
        return _covering(self.s3_write_grants, user, bucket, key)

    def networks(self) -> list[str]:
        return [str(n) for n in self.allow_input_networks]


def _covering(
    grants: dict[str, tuple[Grant, ...]], user: str, bucket: str, key: str
) -> Grant | None:
    """The first of ``user``'s (or everyone's, ``"*"``) grants that covers the key, or None."""
    if not key_is_plain(key):
        return None
    for who in (user, "*"):
        for g in grants.get(who, ()):
            if g.covers(bucket, key):
                return g
    return None


def _parse_grants(raw: Any, name: str, bad: Any) -> dict[str, tuple[Grant, ...]]:
    grants_raw = raw.get(name) or {}
    if not isinstance(grants_raw, dict):
        raise bad(f'{name} must be an object: {{"user": ["s3://bucket/prefix/", ...]}}')
    grants: dict[str, tuple[Grant, ...]] = {}
    for user, places in grants_raw.items():
        if not isinstance(places, list):
            raise bad(f"{name}[{user!r}] must be a list of s3://BUCKET/PREFIX")
        try:
            grants[user] = tuple(Grant.parse(p) for p in places)
        except ValueError as e:
            raise bad(f"{name}[{user!r}]: {e}") from None
    return grants


def parse_policy(raw: Any, source: str = "policy") -> Policy:
    """A :class:`Policy` from its JSON value; ``ConfigError`` names ``source`` and the problem."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"policy file {source}: {why}")

    if not isinstance(raw, dict):
        raise bad(
            "must be a JSON object with allow_input_networks, s3_grants and/or s3_write_grants"
        )
    unknown = set(raw) - _KEYS
    if unknown:
        raise bad(f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}")
    nets = raw.get("allow_input_networks") or []
    if not isinstance(nets, list):
        raise bad('allow_input_networks must be a list of CIDRs like "10.0.0.0/8"')
    try:
        networks = tuple(parse_networks(nets))
    except ValueError as e:
        raise bad(f"allow_input_networks: {e}") from None
    grants = _parse_grants(raw, "s3_grants", bad)
    writes = _parse_grants(raw, "s3_write_grants", bad)
    return Policy(networks, grants, source, writes)


def load_policy(path: str | Path | None) -> Policy:
    """The policy in ``path`` (no path: the empty policy); a malformed file is a ConfigError."""
    if not path:
        return Policy()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"policy file {path}: cannot read it: {e.strerror or e}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"policy file {path}: not valid JSON: {e}") from None
    return parse_policy(raw, str(path))
