"""Where the files of a finished sftprep output are, for the tools that read Parquet themselves:
Hugging Face `datasets`, pandas, polars, DuckDB, and through `datasets` the HF `Trainer` and
TRL's `SFTTrainer`.

The lists come from the run's manifest, not from a directory listing: a published OUT holds
every kept run under runs/, and the manifest names exactly the shards of the run LATEST points
at (the files its checksums cover). Every path the manifest or LATEST names must stay inside
the dataset (`sftprep.dataset.inside`). Storage is reached through `sftprep.storage` (local or
gs://); this module imports neither Beam nor torch.

>>> data_files("out/example")  # doctest: +SKIP
{'train': ['out/example/train/part-00000-of-00001.parquet'], 'validation': [...]}
"""

from __future__ import annotations

from typing import Dict, List

from sftprep import dataset


def data_dir(output: str) -> str:
    """The folder holding the data: OUT/runs/<id> when OUT was published (LATEST), else OUT."""
    return dataset.resolve_latest(str(output))


def manifest(output: str) -> Dict:
    """The manifest.json of the run `output` resolves to, its shape checked."""
    return dataset.read_manifest(data_dir(output))


def data_files(output: str) -> Dict[str, List[str]]:
    """Parquet shards by split, for `datasets.load_dataset("parquet", data_files=...)`; a list
    also works as the source of `polars.read_parquet`, `pandas.read_parquet` (one file each) and
    DuckDB's `read_parquet([...])`. Splits without rows are left out. Each shard's footer is
    read and checked (Parquet, `input_ids` and `labels` lists of integers); its rows are not."""
    opened = dataset.open_output(str(output))
    found = {split: paths for split in dataset.SPLITS if (paths := opened.shards(split))}
    for path in (path for paths in found.values() for path in paths):
        dataset.check_parquet(path)
    return found


def tokenizer_dir(output: str) -> str:
    """The saved tokenizer (with the added control tokens), for `AutoTokenizer.from_pretrained`."""
    return dataset.open_output(str(output)).tokenizer_dir
