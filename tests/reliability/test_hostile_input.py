"""Every kind of broken and hostile input, end to end: each record's fate, nothing lost."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from sftprep.pipeline.run import main
from sftprep.tokenizer.runtime import TokenizerRuntime
from tests.reliability.hostile_corpus import RUN_OPTIONS, write_corpus


def test_every_record_meets_its_expected_fate(tmp_path):
    corpus = tmp_path / "in"
    # Records name their source relative to the folder holding all inputs.
    expected = {key.replace(f"{corpus}/", "", 1): fate for key, fate in write_corpus(corpus).items()}
    out = tmp_path / "out"
    assert main(["--input", str(corpus / "*"), "--output", str(out), *RUN_OPTIONS]) == 0

    written = {f"{r['source']}:{r['source_line']}": r
               for p in sorted((out / "train").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    rejected = {f"{r['source']}:{r['line']}": r
                for p in sorted((out / "rejected").glob("*.jsonl"))
                for r in map(json.loads, p.read_text().splitlines())}
    fates = {key: "written" for key in written}
    fates.update({key: row["reason"] for key, row in rejected.items()})

    corrupt = "corrupt.jsonl.gz"
    survivors = {k for k in fates if k.startswith(corrupt + ":") and not k.endswith(":0")}
    assert all(fates[k] == "written" for k in survivors)  # what the stream still gave is kept
    for key, fate in expected.items():
        assert fates.get(key) == fate, (key, fates.get(key), rejected.get(key, {}).get("detail"))
    assert set(fates) == set(expected) | survivors  # nothing extra, nothing missing

    stats = json.loads((out / "stats.json").read_text())
    assert stats["accounting"]["holds"]
    assert stats["records_read"] == len(fates)
    for row in rejected.values():
        assert row["detail"], row
        if row["reason"] not in ("duplicate", "unreadable_file"):
            assert row["raw"], row  # the raw text is kept for every rejected record
    big = rejected["hostile.jsonl:15"]
    line_bytes = len(b'{"prompt": "') + (3 << 20) + len(b'", "completion": "y"}') + 1
    assert f"{line_bytes} bytes" in big["detail"] and len(big["raw"]) <= 4096

    # Hostile text stayed text: the forged turn is not a turn, the forged EOS is trained text.
    runtime = TokenizerRuntime.from_file(str(out / "tokenizer" / "tokenizer.json"))
    forged = written["hostile.jsonl:20"]
    ids, labels = np.array(forged["input_ids"]), np.array(forged["labels"])
    assert runtime.decode(ids[labels != -100]) == "ok<|im_end|>"
    im_end = runtime.tokenizer.token_to_id("<|im_end|>")
    assert int((ids == im_end).sum()) == 2  # one closing the user turn, one the assistant turn
    eos_text = written["hostile.jsonl:21"]
    ids, labels = np.array(eos_text["input_ids"]), np.array(eos_text["labels"])
    assert runtime.decode(ids[labels != -100]) == "<｜end▁of▁sentence｜><|im_end|>"
    assert runtime.tokenizer.token_to_id("<｜end▁of▁sentence｜>") not in ids.tolist()
    assert "{{ 7*7 }}" in runtime.decode(ids)


def test_rejection_limit_stops_a_broken_export(tmp_path, capsys):
    corpus = tmp_path / "in"
    write_corpus(corpus)
    out = tmp_path / "out"
    options = list(RUN_OPTIONS)
    options[options.index("--max-rejected-fraction") + 1] = "0.01"  # 25 of 1016 are unusable
    assert main(["--input", str(corpus / "*"), "--output", str(out), *options]) == 1
    assert "--max-rejected-fraction 0.01" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    # The failed run still leaves its stats and report to look at, but no manifest.
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records_read"] == 1015 and stats["rows_written"] > 0
    assert (out / "report.html").exists()
