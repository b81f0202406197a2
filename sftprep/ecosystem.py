"""Where the files of a finished sftprep output are, for the tools that read Parquet themselves:
Hugging Face `datasets`, pandas, polars, DuckDB, and through `datasets` the HF `Trainer` and
TRL's `SFTTrainer`.

The lists come from the run's manifest, not from a directory listing: a published OUT holds
every kept run under runs/, and the manifest names exactly the shards of the run LATEST points
at (the files its checksums cover). Every path taken from LATEST or the manifest must lead
inside the dataset (`sftprep.contained`); a malformed LATEST or manifest, or a path leading
out, raises `sftprep.contained.DatasetError` (a `ValueError`) with a one-line message. Beam is
imported on first use only (for its file systems, so gs:// outputs work too); importing this
module stays cheap, and it never imports torch.

>>> data_files("out/example")  # doctest: +SKIP
{'train': ['out/example/train/part-00000-of-00001.parquet'], 'validation': [...]}
"""

from __future__ import annotations

from typing import Dict, List

SPLITS = ("train", "validation")


def data_dir(output: str) -> str:
    """The folder holding the data: OUT/runs/<id> when OUT was published (LATEST), else OUT."""
    from sftprep.pipeline import publish

    return publish.resolve(str(output))


def manifest(output: str) -> Dict:
    """The manifest.json of the run `output` resolves to, its shape checked."""
    from sftprep import contained

    return contained.read_manifest(data_dir(output))


def data_files(output: str) -> Dict[str, List[str]]:
    """Parquet shards by split, for `datasets.load_dataset("parquet", data_files=...)`; a list
    also works as the source of `polars.read_parquet`, `pandas.read_parquet` (one file each) and
    DuckDB's `read_parquet([...])`. Splits without rows are left out. Each shard's footer is
    read and checked (Parquet, `input_ids` and `labels` lists of integers); its rows are not."""
    from sftprep import contained
    from sftprep.pipeline import files

    root = data_dir(output)
    where = files.join(root, files.MANIFEST)
    shards: Dict[str, List[str]] = {split: [] for split in SPLITS}
    rows = dict.fromkeys(SPLITS, 0)
    for index, entry in enumerate(contained.read_manifest(root)["outputs"]):
        if entry["split"] in SPLITS:
            shards[entry["split"]].append(
                contained.inside(root, entry["path"], f"{where}: outputs[{index}].path"))
            rows[entry["split"]] += entry["rows"]
    found = {split: sorted(shards[split]) for split in SPLITS if rows[split] > 0}
    for path in (path for paths in found.values() for path in paths):
        contained.check_parquet(path)  # the footer only: Parquet, token columns of integers
    return found


def tokenizer_dir(output: str) -> str:
    """The saved tokenizer (with the added control tokens), for `AutoTokenizer.from_pretrained`."""
    from sftprep import contained
    from sftprep.pipeline import files

    root = data_dir(output)
    path = contained.read_manifest(root)["tokenizer"].get("path", "tokenizer")
    return contained.inside(root, path, f"{files.join(root, files.MANIFEST)}: tokenizer.path")
