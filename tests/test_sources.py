"""`sources:` of a --config file: parsing, the manifest round trip, and each source's own way
of reading (format, map, system, train_on, validation_fraction) on real records."""

from __future__ import annotations

import dataclasses

from sftprep.sources import mixture_from_file
from sftprep.transforms.prepare import PrepareSettings, SourceSettings, prepare_batch
from sftprep.transforms.shard import assign
from tests.conftest import read_records, spec_for

FILE = {
    "sources": [
        {"name": "gsm8k", "input": ["a/*.jsonl", "b.jsonl"], "map": {"prompt": "question",
                                                                   "completion": "answer"},
         "share": 0.7},
        {"name": "tools", "input": "t.jsonl", "format": "sharegpt", "system": "Be brief.",
         "train_on": "last_assistant", "validation_fraction": 0.1, "share": 0.3}],
    "mix_by": "rows", "total": 1000, "max_repeat": 3}


def test_file_round_trips_through_the_manifest():
    mixture = mixture_from_file(FILE)
    assert [s.name for s in mixture.sources] == ["gsm8k", "tools"]
    assert mixture.sources[0].settings.field_map == (("prompt", "question"),
                                                     ("completion", "answer"))
    assert mixture.sources[1].settings == SourceSettings("sharegpt", (), "Be brief.",
                                                         "last_assistant", 0.1)
    assert (mixture.mix_by, mixture.total, mixture.max_repeat, mixture.unit) == \
        ("rows", 1000.0, 3, "rows")
    assert mixture_from_file(mixture.to_dict()) == mixture  # what `--config manifest.json` reads


def test_each_source_is_read_its_own_way(runtime, token_info):
    """gsm8k through its map, glaive as sharegpt with a system prompt, last turn only, and
    its own validation fraction; a record's `source` (NAME/FILE) picks its settings."""
    gsm8k = [dataclasses.replace(r, source="gsm8k/g.jsonl")
             for r in read_records("gsm8k_train.jsonl", 20)]
    tools = [dataclasses.replace(r, source="tools/t.jsonl")
             for r in read_records("glaive_toolcall_en_demo.jsonl", 20)]
    settings = PrepareSettings(
        template=spec_for("chatml", token_info), num_shards=1, validation_shards=1,
        sources=(("gsm8k", SourceSettings(field_map=(("prompt", "question"),
                                                     ("completion", "answer")))),
                 ("tools", SourceSettings("sharegpt", (), "Be brief.", "last_assistant",
                                          0.5))))
    batch = prepare_batch(gsm8k + tools, settings, runtime)
    assert not batch.rejected and not batch.dropped
    def decode(ids):
        return runtime.tokenizer.decode(ids, skip_special_tokens=False)
    by_source = {"gsm8k": [], "tools": []}
    for example in batch.examples:
        by_source[example.source.split("/")[0]].append(example)
    assert len(by_source["gsm8k"]) == 20 and len(by_source["tools"]) == 20
    for example in by_source["gsm8k"]:
        assert example.split == "train"
        assert "Be brief." not in decode(example.input_ids.tolist())
    for example in by_source["tools"]:
        text = decode(example.input_ids.tolist())
        assert text.count("<|im_start|>system\nBe brief.") == 1
        trained = [t for t in example.labels.tolist() if t != -100]
        last = text.rsplit("<|im_start|>assistant\n", 1)[1].rstrip("\n")
        assert decode(trained) == last  # only the last assistant turn is trained
        assert example.split == assign(example.example_id, 0, 0.5, 1, 1)[0]
    assert {e.split for e in by_source["tools"]} == {"train", "validation"}


def test_the_docs_show_the_example_config():
    """docs/mixtures.md shows docs/examples/mix.yaml as it is, and it is a valid mixture."""
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[1]
    example = yaml.safe_load((root / "docs" / "examples" / "mix.yaml").read_text())
    page = (root / "docs" / "mixtures.md").read_text()
    shown = yaml.safe_load(page.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert shown == example
    mixture = mixture_from_file(example)
    assert [s.share for s in mixture.sources] == [0.4, 0.3, 0.25, 0.05]


def test_totals_in_parts_equal_the_whole_and_max_repeat_caps_copies():
    """Per-shard sparse totals sum to the histogram of all examples; `max_repeat` caps copies."""
    import numpy as np

    from sftprep.transforms import mix

    ids = [f"{i:032x}" for i in range(3000)]
    tags = ["a/x.jsonl" if i % 3 else "b/y.jsonl" for i in range(3000)]
    tokens = np.arange(3000, dtype=np.int32) % 97 + 1
    summed = {}
    for start in range(0, 3000, 700):
        part = mix.batch_totals(ids[start:start + 700], tags[start:start + 700],
                                tokens[start:start + 700], 5, "trained_tokens")
        mix.add_totals(summed, part)
    for name in ("a", "b"):
        whole = mix.Totals.of((mix.draw(i, 5), int(t)) for i, t, g in zip(ids, tokens, tags)
                              if g.startswith(name + "/"))
        assert np.array_equal(summed[name], whole.units)
    mixing = mix.Mixing((("a", mix.Request(share=0.1)), ("b", mix.Request(share=0.9))),
                        "trained_tokens", seed=5, total=float(tokens.sum()) * 10, max_repeat=3)
    plan = mixing.plan(summed)
    assert plan["b"].capped and plan["b"].multiplier == 3.0
    copies = mixing.copies(plan, ids, tags)
    assert copies[[g.startswith("b/") for g in tags]].tolist() == [3] * 1000
    assert copies.max() == 3 and copies.min() >= 1


def test_a_source_map_reads_like_the_top_level_map():
    """`map` of a source takes every form the top-level `map` takes, with the same checks."""
    import pytest

    from sftprep.errors import ConfigError
    from sftprep.transforms.settings import field_map_value

    forms = ({"prompt": "question"}, "prompt=question", ["prompt=question"],
             [{"prompt": "question"}])
    for form in forms:
        source = {"name": "s", "input": "a.jsonl", "map": form}
        [parsed] = mixture_from_file({"sources": [source]}).sources
        assert parsed.settings.field_map == tuple(field_map_value("map", form)) == \
            (("prompt", "question"),)
    with pytest.raises(ConfigError) as err:
        mixture_from_file({"sources": [{"name": "s", "input": "a.jsonl", "map": {"prompt": 5}}]})
    assert str(err.value) == ("--config: source s: map entries must be NEW=OLD or NEW: OLD with "
                              "string names, got {'prompt': 5}")
