"""Where the files of a finished sftprep output are, for the tools that read Parquet themselves:
Hugging Face `datasets`, pandas, polars, DuckDB, and through `datasets` the HF `Trainer` and
TRL's `SFTTrainer`.

The lists come from the run's manifest, not from a directory listing: a published OUT holds
every kept run under runs/, and the manifest names exactly the shards of the run LATEST points
at (the files its checksums cover). Beam is imported on first use only (for its file systems,
so gs:// outputs work too); importing this module stays cheap, and it never imports torch.

>>> data_files("out/example")  # doctest: +SKIP
{'train': ['out/example/train/part-00000-of-00001.parquet'], 'validation': [...]}
"""

from __future__ import annotations

import json
from typing import Dict, List

SPLITS = ("train", "validation")


def data_dir(output: str) -> str:
    """The folder holding the data: OUT/runs/<id> when OUT was published (LATEST), else OUT."""
    from sftprep.pipeline import publish

    return publish.resolve(str(output))


def manifest(output: str) -> Dict:
    """The manifest.json of the run `output` resolves to."""
    from sftprep.pipeline import files

    return json.loads(files.read_text(files.join(data_dir(output), files.MANIFEST)))


def data_files(output: str) -> Dict[str, List[str]]:
    """Parquet shards by split, for `datasets.load_dataset("parquet", data_files=...)`; a list
    also works as the source of `polars.read_parquet`, `pandas.read_parquet` (one file each) and
    DuckDB's `read_parquet([...])`. Splits without rows are left out."""
    from sftprep.pipeline import files

    root = data_dir(output)
    shards: Dict[str, List[str]] = {split: [] for split in SPLITS}
    rows = dict.fromkeys(SPLITS, 0)
    for entry in manifest(output)["outputs"]:
        if entry["split"] in SPLITS:
            shards[entry["split"]].append(files.join(root, entry["path"]))
            rows[entry["split"]] += entry["rows"]
    return {split: sorted(shards[split]) for split in SPLITS if rows[split] > 0}


def tokenizer_dir(output: str) -> str:
    """The saved tokenizer (with the added control tokens), for `AutoTokenizer.from_pretrained`."""
    from sftprep.pipeline import files

    return files.join(data_dir(output), manifest(output)["tokenizer"].get("path", "tokenizer"))
