"""Each composite transform on Beam's TestPipeline, with assert_that on its output."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from sftprep.pipeline.graph import (
    REJECTED_TAG, STATS_TAG, PrepareExamples, ReadRawRecords, WriteRejected, WriteShards)
from sftprep.pipeline.prepare import read_pieces
from sftprep.pipeline.write import ShardSpec
from sftprep.transforms.prepare import PrepareSettings
from tests.conftest import DATA, spec_for


def TestPipeline():  # noqa: N802 - reads like Beam's class; pinned to the offline runner
    return BeamTestPipeline(runner=FnApiRunner())


def test_read_raw_records_batches_every_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"prompt": str(i), "completion": "c"}) + "\n"
                            for i in range(25)))
    with TestPipeline() as p:
        batches = (p | ReadRawRecords([(str(path), path.stat().st_size, path.name)],
                                      max_record_bytes=1 << 20, batch_size=10))
        sizes = batches | beam.Map(len)
        lines = batches | beam.FlatMap(lambda b: [r.line for r in b])
        assert_that(sizes, equal_to([10, 10, 5]), label="sizes")
        assert_that(lines, equal_to(list(range(1, 26))), label="lines")


def test_read_raw_records_in_ranges_keeps_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"prompt": "p" * (i % 17), "completion": str(i)}) for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    with TestPipeline() as p:
        records = (p | ReadRawRecords([(str(path), path.stat().st_size, path.name)], max_record_bytes=1 << 20,
                                      batch_size=8, range_bytes=300)
                   | beam.FlatMap(lambda batch: batch))
        assert_that(records | beam.Map(lambda r: (r.line, r.text)),
                    equal_to(list(enumerate(lines, start=1))))


def test_prepare_examples_keys_by_shard_and_tags_rejections(tmp_path, tokenizer_dir):
    directory, info = tokenizer_dir
    pieces = str(tmp_path / "pieces")
    settings = PrepareSettings(template=spec_for("chatml", info), num_shards=2)
    lines = (DATA / "seed_examples.jsonl").read_text().splitlines()[:4] + ["{broken"]
    from sftprep.transforms.records import RawRecord

    batch = [RawRecord("seed", i + 1, line) for i, line in enumerate(lines)]
    with TestPipeline() as p:
        out = (p | beam.Create([batch])
               | PrepareExamples(settings, str(directory / "tokenizer.json"), rejected_shards=1,
                                 pieces_dir=pieces))
        rows = out.examples | beam.FlatMap(
            lambda kv: [(kv[0], line) for line in read_pieces([kv[1]]).column(
                "source_line").to_pylist()])
        assert_that(out.examples | beam.Filter(lambda kv: not kv[1].startswith(pieces)),
                    equal_to([]), label="pieces")
        assert_that(rows | beam.Map(lambda kv: kv[1]), equal_to([1, 2, 3, 4]), label="examples")
        assert_that(rows | beam.Map(lambda kv: kv[0][0]), equal_to(["train"] * 4), label="split")
        assert_that(out[REJECTED_TAG] | beam.Map(lambda kv: (kv[1][1], kv[1][2])),
                    equal_to([(5, "invalid_json")]), label="rejected")
        assert_that(out[STATS_TAG] | beam.Map(lambda s: s["read"]["seed"]), equal_to([5]),
                    label="stats")


def _piece(directory, name, tokenizer_dir, records, num_shards=1):
    from sftprep.pipeline.prepare import encode_rows
    from sftprep.transforms.prepare import prepare_batch
    from sftprep.tokenizer.runtime import TokenizerRuntime

    directory, info = tokenizer_dir
    runtime = TokenizerRuntime.from_file(str(directory / "tokenizer.json"), info.bos)
    settings = PrepareSettings(template=spec_for("markers", info), num_shards=num_shards)
    path = directory / name
    path.write_bytes(encode_rows(prepare_batch(records, settings, runtime).rows))
    return str(path)


def test_write_shards_sorts_dedups_and_writes_every_shard(tmp_path, tokenizer_dir):
    from sftprep.transforms.records import RawRecord

    record = json.dumps({"prompt": "same", "completion": "text"})
    other = json.dumps({"prompt": "other", "completion": "text"})
    first = _piece(tmp_path, "1.arrow", tokenizer_dir,
                   [RawRecord("b.jsonl", 9, record), RawRecord("a.jsonl", 2, other)])
    second = _piece(tmp_path, "2.arrow", tokenizer_dir, [RawRecord("a.jsonl", 5, record)])
    with TestPipeline() as p:
        written = (p | beam.Create([(("train", 0), first), (("train", 0), second)])
                   | WriteShards(ShardSpec(str(tmp_path), {"train": 3}, rejected_shards=1)))
        assert_that(written.files | beam.Map(lambda f: (f["path"], f["rows"])),
                    equal_to([("train/part-00000-of-00003.parquet", 2),
                              ("train/part-00001-of-00003.parquet", 0),
                              ("train/part-00002-of-00003.parquet", 0)]), label="files")
        assert_that(written[REJECTED_TAG] | beam.Map(lambda kv: kv[1][:3]),
                    equal_to([("b.jsonl", 9, "duplicate")]), label="dups")
    table = pq.read_table(tmp_path / "train" / "part-00000-of-00003.parquet")
    ids = table.column("example_id").to_pylist()
    assert ids == sorted(ids)
    # The duplicate kept is the first by (source, line): a.jsonl:5, not b.jsonl:9.
    assert ("a.jsonl", 5) in zip(table.column("source").to_pylist(),
                                 table.column("source_line").to_pylist())
    assert pq.read_table(tmp_path / "train" / "part-00001-of-00003.parquet").num_rows == 0
    assert not (tmp_path / "1.arrow").exists() and not (tmp_path / "2.arrow").exists()


def test_write_rejected_sorts_rows(tmp_path):
    rows = [(0, ("b", 2, "x", '{"n": 3}')), (0, ("a", 7, "x", '{"n": 2}')),
            (0, ("a", 1, "x", '{"n": 1}'))]
    with TestPipeline() as p:
        files = p | beam.Create(rows) | WriteRejected(str(tmp_path), shards=2)
        assert_that(files | beam.Map(lambda f: (f["path"], f["rows"])),
                    equal_to([("rejected/part-00000-of-00002.jsonl", 3),
                              ("rejected/part-00001-of-00002.jsonl", 0)]))
    text = (tmp_path / "rejected" / "part-00000-of-00002.jsonl").read_text()
    assert text == '{"n": 1}\n{"n": 2}\n{"n": 3}\n'
