"""`sftprep inspect --output OUT --index I`: one written row of a finished run, token by token.

A packed row (`run --pack-length`) is shown example by example, split by its seq_lengths, with
each example's id, source line, token span and trained count, so the boundaries inside the
pack are visible; an unpacked row is shown as its one example. Reads the run through its
manifest (`dataset.open_output`) and decodes with the run's own saved tokenizer.
"""

from __future__ import annotations

from typing import List, Sequence

import pyarrow.parquet as pq

from sftprep import dataset, storage
from sftprep.errors import ConfigError
from sftprep.views import inspect as view

RULE = "─" * 3
READ_BATCH_ROWS = 64  # rows decoded at a time while looking for the row


def find_row(opened: dataset.OutputDataset, split: str, index: int):
    """(shard path, row within it, the row as a dict) of the split's row `index` (0-based,
    shards in manifest order).

    Reads footers to count rows (shard by shard, then row group by row group) and decodes only
    the row group that holds the row, READ_BATCH_ROWS rows at a time up to the batch holding it.
    """
    total = opened.rows(split)
    if not 0 <= index < total:
        raise ConfigError(f"--index {index}: {opened.location} has {total} {split} rows "
                          f"(0 to {total - 1})")
    for path in opened.shards(split):
        with dataset.parquet_errors(path), storage.open_read(path) as handle:
            parquet = pq.ParquetFile(handle)
            metadata = parquet.metadata
            if index >= metadata.num_rows:
                index -= metadata.num_rows
                continue
            in_shard, group = index, 0
            while index >= metadata.row_group(group).num_rows:
                index -= metadata.row_group(group).num_rows
                group += 1
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[group],
                                              use_threads=False):
                if index < batch.num_rows:
                    return path, in_shard, batch.slice(index, 1).to_pylist()[0]
                index -= batch.num_rows
            break  # the row group holds fewer rows than its footer says
    raise ConfigError(f"--index: the {split} shards hold fewer rows than the manifest says")


def examples_of(row: dict) -> List[dict]:
    """The examples of a written row: split by seq_lengths when packed, else the row itself.

    >>> [e["input_ids"] for e in examples_of({"input_ids": [1, 2, 3], "labels": [-100, 2, -100],
    ...     "position_ids": [0, 1, 0], "seq_lengths": [2, 1], "example_ids": ["a", "b"],
    ...     "sources": ["f", "f"], "source_lines": [1, 2], "truncated": [False, False]})]
    [[1, 2], [3]]
    """
    if "seq_lengths" not in row:
        return [{**row, "start": 0}]
    out, start = [], 0
    for number, length in enumerate(row["seq_lengths"]):
        out.append({"input_ids": row["input_ids"][start:start + length],
                    "labels": row["labels"][start:start + length], "start": start,
                    "example_id": row["example_ids"][number], "source": row["sources"][number],
                    "source_line": row["source_lines"][number],
                    "truncated": row["truncated"][number]})
        start += length
    return out


def format_row(opened: dataset.OutputDataset, split: str, index: int, runtime,
               color: bool) -> str:
    """The text `inspect --output` prints for one row."""
    path, in_shard, row = find_row(opened, split, index)
    examples = examples_of(row)
    pack = opened.pack_length
    capacity = f" of {pack}" if pack else ""
    lines = [f"{opened.root} {split} row {index} ({path.rsplit('/', 1)[-1]} row {in_shard}): "
             f"{len(examples)} example{'s' if len(examples) != 1 else ''}, "
             f"{len(row['input_ids'])}{capacity} tokens, {row['num_trainable_tokens']} trained"]
    for number, example in enumerate(examples, start=1):
        length = len(example["input_ids"])
        trained = sum(label != dataset.IGNORE_INDEX for label in example["labels"])
        boundary = "; its first label is -100 (no target across the boundary)" \
            if example["start"] else ""
        lines.append(f"{RULE} example {number}/{len(examples)}  example_id={example['example_id']}"
                     f"  {example['source']}:{example['source_line']}  tokens {example['start']}"
                     f"-{example['start'] + length - 1} ({length}, positions 0-{length - 1})  "
                     f"trained={trained}  truncated={'yes' if example['truncated'] else 'no'}"
                     f"{boundary}")
        pieces = view.token_pieces(example["input_ids"], example["labels"], runtime)
        lines.append(view._pieces_color(pieces) if color else view.pieces_plain(pieces))
    return "\n".join(lines) + "\n"


def runtime_of(opened: dataset.OutputDataset):
    """The run's saved tokenizer (local runs), as inspect decodes with it."""
    from sftprep.tokenizer.runtime import TokenizerRuntime
    from sftprep.tokenizer.load import load_tokenizer_source

    if storage.is_remote(opened.tokenizer_dir):
        raise ConfigError(f"--output {opened.location}: inspect reads local runs only")
    source = load_tokenizer_source(opened.tokenizer_dir)
    return TokenizerRuntime(source.backend(), str(opened.tokenizer.get("bos") or ""))


def show(location: str, split: str, indices: Sequence[int], color: bool) -> str:
    opened = dataset.open_output(location)
    runtime = runtime_of(opened)
    return "\n".join(format_row(opened, split, index, runtime, color) for index in indices)
