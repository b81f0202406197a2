"""One published pipeline run shared by the ecosystem tests: glaive tool-call dialogues (multi-turn,
several trained spans per row, many rows truncated at 256 tokens), with a validation split."""

from __future__ import annotations

import pytest

from sftprep.pipeline.run import main
from tests.conftest import DATA


@pytest.fixture(scope="package")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("ecosystem") / "out"
    code = main(["--input", str(DATA / "glaive_toolcall_en_demo.jsonl"), "--output", str(out),
                 "--max-length", "256", "--validation-fraction", "0.1", "--num-shards", "2",
                 "--publish", "--progress", "never"])
    assert code == 0
    return out
