"""Planning of dask_kotta.dataframe and read_bytes against local files and Dask's own readers.

Partitions from Parquet footers, byte ranges, and the URLs a dataframe's tasks carry
into KottaScheduler's plan after Dask's optimisation. The reads themselves (S3, staged
files, the same frames as Dask's) are tests/integration/test_dask_frames_s3.py's.
"""

from __future__ import annotations

import dask
import dask.bytes
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dask_kotta.dask.byteranges import block_offsets
from dask_kotta.dask.dataframe import plan_parquet
from dask_kotta.dask.graph import build
from dask_kotta.dask.staged_frames import Block, CsvPart, ParquetPart


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pq")
    for i, (rows, rg) in enumerate([(1000, 100), (550, 100), (300, 300)]):
        df = pd.DataFrame({"a": np.arange(rows), "b": np.arange(rows) * 0.5})
        df.to_parquet(d / f"f{i}.parquet", row_group_size=rg, index=False)
    return d


def _footers(d):
    return [(f"s3://b/{p.name}", pq.read_metadata(p)) for p in sorted(d.glob("*.parquet"))]


@pytest.mark.parametrize("split", [False, True, 3, "adaptive", "infer"])
def test_parquet_partitions_from_footers_are_dask_s(parquet_dir, split):
    footers = _footers(parquet_dir)
    blocksize = 4000  # bytes: "adaptive" groups a few row groups, and "infer" chooses it
    parts = plan_parquet(footers, split, blocksize)
    theirs = dd.read_parquet(str(parquet_dir), split_row_groups=split, blocksize=blocksize)
    assert len(parts) == theirs.npartitions
    # Every row group of every file once, in order, a partition never spanning files.
    flat = []
    for part in parts:
        assert len(part) == 1
        url, rgs = part[0]
        md = dict(footers)[url]
        flat.extend((url, g) for g in (rgs if rgs is not None else range(md.num_row_groups)))
    assert flat == [(u, g) for u, md in footers for g in range(md.num_row_groups)]
    if split is True:
        assert all(len(p[0][1]) == 1 for p in parts)
    if split is False:
        assert [p[0][1] for p in parts] == [None] * 3
    with pytest.raises(ValueError, match="at least 1"):
        plan_parquet(footers, 0)


def _offset_length(block) -> tuple[int, int]:
    # read_block_from_file(lazy_file, offset, length, delimiter), as dask's task holds it
    task = dict(block.dask)[block.key]
    args = task.args if hasattr(task, "args") else task[1:]
    return args[1], args[2]


@pytest.mark.parametrize("blocksize", [None, 7, 100, 1000, 4096, 10_000])
def test_byte_ranges_are_dask_s(tmp_path, blocksize):
    sizes = [0, 1, 99, 100, 101, 999, 4097, 12_345]
    for n in sizes:
        (tmp_path / f"f{n:06d}.bin").write_bytes(bytes(i % 251 for i in range(n)))
    _, theirs = dask.bytes.read_bytes(str(tmp_path / "*.bin"), blocksize=blocksize, sample=False)
    for n, their_blocks in zip(sizes, theirs, strict=True):
        mine = block_offsets(n, blocksize)
        if blocksize is None:
            assert mine == [(0, None)]
            continue
        want = [_offset_length(b) for b in their_blocks]
        assert mine == want, (n, blocksize)
        assert sum(length for _, length in mine) == n


def test_a_block_read_splits_on_the_delimiter_as_dask_does(tmp_path):
    data = b"".join(b"line %d %s\n" % (i, b"x" * (i % 17)) for i in range(500))
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    _, theirs = dask.bytes.read_bytes(str(path), blocksize=333, delimiter=b"\n", sample=False)
    (want,) = dask.compute(theirs[0], scheduler="sync")
    # Off Kotta a Block downloads its object; a staged copy stands in for it here.
    blocks = [Block("s3://b/lines.txt", o, n, b"\n") for o, n in block_offsets(len(data), 333)]
    got = []
    for b in blocks:
        with open(path, "rb") as f:
            from fsspec.utils import read_block

            got.append(read_block(f, b.offset, b.length, b.delimiter))
    assert got == list(want)
    assert b"".join(got) == data


def test_a_dataframe_s_urls_reach_the_plan_after_optimisation():
    class Read:
        def __call__(self, part, columns=None):
            df = pd.DataFrame({"a": [len(part.pieces)], "b": [1.0], "c": ["x"]})
            return df if columns is None else df[columns]

    urls = [f"s3://b/d/f{i}.parquet" for i in range(4)]
    parts = [ParquetPart([(u, [0]), (u, [1])]) for u in urls]
    meta = pd.DataFrame(
        {"a": pd.Series([], dtype="int64"), "b": pd.Series([], dtype="float64"),
         "c": pd.Series([], dtype="str")}
    )  # fmt: skip
    df = dd.from_map(Read(), parts, meta=meta, enforce_metadata=False)
    total = (df[df.a > 0].b + 1).sum()  # projection, a filter, a reduction: optimised and fused
    seen = {}

    def get(dsk, keys, **kwargs):  # what dask.compute hands a scheduler, after optimisation
        seen["graph"], _ = build(dsk, keys)
        return dask.get(dsk, keys)

    assert total.compute(scheduler=get) == 8.0
    carried = sorted(u for us in seen["graph"].task_inputs.values() for u in us)
    assert carried == urls  # each partition's own URL, once, on the task that reads it
    # CSV parts and read_bytes blocks carry theirs the same way.
    assert CsvPart(Block("s3://b/x.csv", 0, 10, b"\n"), True, False).__kotta_inputs__ == (
        "s3://b/x.csv",
    )
