"""The shard writer's outputs on bundled records are exactly those recorded before the writer
was vectorized: Parquet bytes, rows, stats and duplicate rejections, plain and packed, with and
without a mixture (weights, and shares by trained tokens with max_repeat).

write_bytes.json was recorded from `main` (c57e378) with
`python -m tests.pipeline.test_write_bytes --record`, and re-recorded once when dictionary
encoding was turned off for all but the source columns (write.DICTIONARY_COLUMNS): only the
files' bytes and sizes changed then, every content digest stayed. The Parquet bytes name the pyarrow that
wrote them, so the byte digests are compared under the pyarrow version they were recorded with;
the decoded content (schema and every value) is compared under any version.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import sys
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftprep.pipeline import graph, write
from sftprep.pipeline.prepare import decode_examples, encode_rows
from sftprep.transforms.mix import Mixing, Request
from sftprep.transforms.prepare import PrepareSettings, prepare_batch
from tests.conftest import read_records, spec_for

GOLDEN = pathlib.Path(__file__).with_name("write_bytes.json")
ORDER = ("alpha", "beta", "gamma")
# Records under mixture-style tags; the seed examples are read by two sources, so alpha's copy
# of each is kept and beta's is a duplicate.
SOURCES = (("alpha", "seed_examples.jsonl", None), ("alpha", "v1_sft_demo.jsonl", 200),
           ("beta", "seed_examples.jsonl", None), ("beta", "alpaca_en_demo.jsonl", 300),
           ("gamma", "glaive_toolcall_en_demo.jsonl", 150))
WEIGHTS = Mixing(tuple((n, Request(weight=w)) for n, w in zip(ORDER, (1.5, 0.5, 2.0))),
                 "rows", seed=3, order=ORDER)
SHARES = Mixing(tuple((n, Request(share=s)) for n, s in zip(ORDER, (0.5, 0.2, 0.3))),
                "trained_tokens", seed=5, total=100000.0, max_repeat=2, order=ORDER)
CASES: Dict[str, "tuple[Optional[Mixing], int]"] = {
    "plain": (None, 0), "packed": (None, 512), "weights": (WEIGHTS, 0),
    "weights_packed": (WEIGHTS, 512), "shares_packed": (SHARES, 400)}


def shard_table(runtime, token_info) -> pa.Table:
    """The examples of the bundled records, as the writer reads them: three pieces."""
    settings = PrepareSettings(template=spec_for("chatml", token_info), max_length=400)
    records = [r.__class__(f"{name}/{file}", r.line, r.text)
               for name, file, limit in SOURCES for r in read_records(file, limit)]
    table = decode_examples([encode_rows(prepare_batch(records, settings, runtime).rows)])
    third = table.num_rows // 3
    return pa.concat_tables([table.slice(0, third), table.slice(third, third),
                             table.slice(2 * third)])


def write_shard(table: pa.Table, tmp: pathlib.Path, mixing: Optional[Mixing],
                pack_length: int) -> Dict[str, object]:
    """Run the shard writer on `table` (as three piece files) and collect what it emits."""
    tmp.mkdir(parents=True)
    pieces = []
    for index, batch in enumerate(table.to_batches()):
        path = tmp / f"piece-{index}.arrow"
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        path.write_bytes(sink.getvalue())
        pieces.append(str(path))
    element = (("train", 0), pieces + [None])
    spec = write.ShardSpec(str(tmp / "out"), {"train": 1}, 2, mixing, ORDER, pack_length)
    totals = None
    if mixing is not None:
        counted = list(graph._KeptTotalsFn(spec).process(element))
        combine = graph._SumTotals()
        totals = combine.extract_output(combine.add_input(combine.create_accumulator(),
                                                          counted[0]))
    writer_fn = graph._WriteShardFn(spec)
    outputs = list(writer_fn.process(element, totals))
    main = [o for o in outputs if not hasattr(o, "tag")]
    stats = [o.value for o in outputs if getattr(o, "tag", None) == "stats"]
    rejected = sorted(o.value for o in outputs if getattr(o, "tag", None) == "rejected")
    data = (tmp / "out" / main[0]["path"]).read_bytes()
    return {"file": main[0], "content": content_digest(data), "stats": stats,
            "rejected": [list(r) for r in rejected]}


def content_digest(data: bytes) -> str:
    table = pq.read_table(io.BytesIO(data))
    digest = hashlib.sha256(str(table.schema.remove_metadata()).encode())
    for name in table.column_names:
        digest.update(json.dumps([name, table.column(name).to_pylist()]).encode())
    return digest.hexdigest()


def outcomes(runtime, token_info, tmp: pathlib.Path) -> Dict[str, object]:
    table = shard_table(runtime, token_info)
    out: Dict[str, object] = {"pyarrow": pa.__version__}
    for name, (mixing, pack_length) in CASES.items():
        out[name] = json.loads(json.dumps(write_shard(table, tmp / name, mixing, pack_length)))
    order, _, first = write.dedup(table, ORDER)
    unique = table.take(order.filter(pa.array(first)))
    packs = write.pack_table(unique, 400, packer="first_fit_decreasing")
    out["first_fit_content"] = content_digest(write._parquet_bytes(packs))
    return out


@pytest.fixture(scope="module")
def recorded(runtime, token_info, tmp_path_factory):
    return outcomes(runtime, token_info, tmp_path_factory.mktemp("write_bytes"))


@pytest.mark.parametrize("case", sorted(CASES) + ["first_fit_content"])
def test_writer_outputs_equal_the_recorded_ones(recorded, case):
    golden = json.loads(GOLDEN.read_text())
    got, want = recorded[case], golden[case]
    if case == "first_fit_content":
        assert got == want
        return
    assert got["content"] == want["content"]
    assert got["stats"] == want["stats"]
    assert got["rejected"] == want["rejected"]
    assert got["file"]["rows"] == want["file"]["rows"] > 0
    if pa.__version__ == golden["pyarrow"]:
        assert got["file"] == want["file"]  # sha256 and size of the Parquet bytes


def test_the_recorded_cases_cover_duplicates_repeats_and_sampling(recorded):
    """The golden cases exercise what they claim to: cross-source duplicates rejected, copies
    repeated and sampled out, max_repeat capping a share, packs holding several examples."""
    duplicates = recorded["plain"]["stats"][0]["duplicates"]
    assert duplicates["beta/seed_examples.jsonl"] == 10  # beta's copies of alpha's examples
    assert len(recorded["plain"]["rejected"]) == sum(duplicates.values())
    weights = recorded["weights"]["stats"][0]
    assert weights["repeats"] and weights["sampled_out"]
    shares = recorded["shares_packed"]["stats"][0]
    assert shares["sampled_out"] and shares["repeats"]
    # alpha's share needs more than max_repeat copies: every one of its examples has two.
    written = recorded["plain"]["stats"][0]["written"]["train"]
    assert shares["mix_rows"]["alpha"] == 2 * sum(n for tag, n in written.items()
                                                  if tag.startswith("alpha/"))
    assert recorded["packed"]["file"]["rows"] < recorded["plain"]["file"]["rows"]


def main(argv: List[str]) -> None:
    """--record: rewrite write_bytes.json from this checkout's writer."""
    if argv != ["--record"]:
        raise SystemExit("usage: python -m tests.pipeline.test_write_bytes --record")
    import tempfile

    from tests.conftest import TokenInfo
    from sftprep.tokenizer.load import DEFAULT_TOKENIZER, load_tokenizer_source
    from sftprep.transforms import templates
    from sftprep.tokenizer.runtime import TokenizerRuntime

    source = load_tokenizer_source(DEFAULT_TOKENIZER)
    tokens = [t for name in templates.BUILTIN_TEMPLATES
              for t in templates.TemplateSpec(name).special_tokens()]
    tokenizer_files, info = source.with_tokens(tokens)
    with tempfile.TemporaryDirectory() as directory:
        for name, data in tokenizer_files.items():
            (pathlib.Path(directory) / name).write_bytes(data)
        runtime = TokenizerRuntime.from_file(str(pathlib.Path(directory) / "tokenizer.json"),
                                             source.bos)
        result = outcomes(runtime, TokenInfo(info, source.bos, source.eos),
                          pathlib.Path(directory) / "work")
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"recorded {GOLDEN}")


if __name__ == "__main__":
    main(sys.argv[1:])
