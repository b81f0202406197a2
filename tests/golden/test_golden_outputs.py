"""Same tokens and labels as recorded: every built-in template and truncation policy over the
bundled files, and the README main job end to end.

The hashes in golden_hashes.json were recorded from `main` before the second round's changes
(safety, templates, restructure). A change that alters tokens or labels of this data must say
so and why, and re-record them with `python -m tests.golden.test_golden_outputs --record`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from typing import Dict

import pytest

from tests.conftest import read_records

GOLDEN = pathlib.Path(__file__).with_name("golden_hashes.json")
ROOT = pathlib.Path(__file__).resolve().parents[2]
GSM8K_MAP = (("prompt", "question"), ("completion", "answer"))
FILES = ("seed_examples.jsonl", "gsm8k_train.jsonl", "alpaca_en_demo.jsonl",
         "glaive_toolcall_en_demo.jsonl", "v1_sft_demo.jsonl")
TEMPLATES = ("markers", "chatml", "separator")
POLICIES = ("keep_completion", "drop_oldest_turns", "truncate_right", "drop")
MAX_LENGTH = 192  # short enough that every policy cuts or drops a good share of the data
GSM8K_RECORDS = 1500  # of 7,473: the rest adds time, not cases


def _records():
    records = []
    for name in FILES:
        limit = GSM8K_RECORDS if name == "gsm8k_train.jsonl" else None
        records += [r.__class__(name, r.line, r.text) for r in read_records(name, limit)]
    return records


def prepared_digest(template: str, policy: str, runtime, token_info) -> str:
    """sha256 of every example's (id, source, line, ids, labels, truncation) and every
    rejection's (source, line, reason), in a fixed order."""
    from sftprep.transforms.prepare import PrepareSettings, prepare_batch
    from sftprep.transforms.templates import TemplateSpec

    spec = TemplateSpec(template, bos=token_info.bos, eos=token_info.eos)
    settings = PrepareSettings(template=spec, field_map=GSM8K_MAP, max_length=MAX_LENGTH,
                               truncation=policy)
    records = _records()
    digest = hashlib.sha256()
    rows, unused = [], []
    for start in range(0, len(records), 512):
        batch = prepare_batch(records[start:start + 512], settings, runtime)
        rows += [(e.example_id, e.source, e.source_line, e.input_ids.tolist(), e.labels.tolist(),
                  list(e.truncation)) for e in batch.examples]
        unused += [(r.source, r.line, r.reason) for r in batch.rejected + batch.dropped]
    for item in sorted(rows) + sorted(unused):
        digest.update(json.dumps(item).encode())
    return digest.hexdigest()


def parquet_digest(output: pathlib.Path) -> str:
    """sha256 of the (example_id, input_ids, labels) of every written row, in file order."""
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    for path in sorted(output.glob("*/part-*.parquet")):
        table = pq.read_table(path, columns=["example_id", "input_ids", "labels"])
        digest.update(path.relative_to(output).as_posix().encode())
        for column in table.columns:
            digest.update(json.dumps(column.to_pylist()).encode())
    return digest.hexdigest()


def main_job_digest(output: pathlib.Path) -> str:
    """The README's main job (examples/*.jsonl, gsm8k renamed), run in-process."""
    from sftprep.pipeline.run import main

    code = main(["--input", str(ROOT / "examples" / "*.jsonl"), "--output", str(output),
                 "--map", "prompt=question", "--map", "completion=answer", "--progress", "never"])
    assert code == 0
    return parquet_digest(output)


def _golden() -> Dict[str, str]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("policy", POLICIES)
def test_prepared_examples_are_unchanged(template, policy, runtime, token_info):
    assert prepared_digest(template, policy, runtime, token_info) == \
        _golden()[f"{template}/{policy}"]


def test_readme_main_job_writes_the_recorded_rows(tmp_path):
    assert main_job_digest(tmp_path / "out") == _golden()["readme_main_job"]


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    from sftprep.tokenizer.load import DEFAULT_TOKENIZER, load_tokenizer_source
    from sftprep.transforms import templates
    from sftprep.tokenizer.runtime import TokenizerRuntime
    from tests.conftest import TokenInfo

    source = load_tokenizer_source(DEFAULT_TOKENIZER)
    files, info = source.with_tokens([t for name in templates.BUILTIN_TEMPLATES
                                      for t in templates.TemplateSpec(name).special_tokens()])
    runtime = TokenizerRuntime.from_json(files["tokenizer.json"].decode(), source.bos)
    token_info = TokenInfo(info, source.bos, source.eos)
    recorded = {f"{t}/{p}": prepared_digest(t, p, runtime, token_info)
                for t in TEMPLATES for p in POLICIES}
    with tempfile.TemporaryDirectory() as tmp:
        recorded["readme_main_job"] = main_job_digest(pathlib.Path(tmp) / "out")
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(recorded)} hashes in {GOLDEN}")
