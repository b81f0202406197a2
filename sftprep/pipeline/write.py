"""Writing: one deterministic Parquet file per shard, and the rejected records as JSON Lines
(Beam's `WriteShards` and `WriteRejected` in graph.py, and the inline run, write through these).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sftprep.dataset import DEFAULT_PACKER, OUTPUT_SCHEMA, PACKED_SCHEMA
from sftprep.pipeline import files
from sftprep.pipeline.prepare import keyed_rejection, read_pieces
from sftprep.transforms import pack as pack_lib
from sftprep.transforms import stats as stats_lib
from sftprep.transforms.mix import Mixing, SourcePlan, coded_totals, draws, source_name
from sftprep.transforms.records import DUPLICATE_REASON, Rejection
from sftprep.transforms.shard import shard_name

ROW_GROUP_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """How a run writes its shards: where, how many per split, the rejected files' count, and
    a mixture (copies per example), the sources' order (the first keeps a duplicate) and the
    pack length (0: one example per row)."""

    output: str
    shard_counts: Dict[str, int]
    rejected_shards: int
    mixing: Optional[Mixing] = None
    source_order: Tuple[str, ...] = ()
    pack_length: int = 0

    def keys(self) -> List[Tuple[str, int]]:
        """Every (split, shard) the run writes, the empty ones too, in order."""
        return [(split, index) for split, count in sorted(self.shard_counts.items())
                for index in range(count)]


@dataclasses.dataclass
class WrittenShard:
    """One written shard: its manifest entry, its stats, and the duplicates it dropped (as
    keyed rejected rows, see prepare.keyed_rejection)."""

    file: Dict[str, Any]
    stats: stats_lib.Stats
    duplicates: List[Tuple[int, Tuple[str, int, str, str]]]


def write_shard(spec: ShardSpec, split: str, shard: int, table: pa.Table,
                plan: Optional[Dict[str, SourcePlan]] = None) -> WrittenShard:
    """Sort a shard's rows (`table`, in the shuffle's schema) by example id, keep the first of
    identical ids, write Parquet (packed with a pack length). `plan`: a mixture's, from the
    summed totals of every shard (`kept_totals`)."""
    order, keys, first = dedup(table, spec.source_order)
    stats: stats_lib.Stats = {}
    duplicates = []
    for index in np.flatnonzero(~first):
        duplicates.append(_duplicate_row(keys, index, first, spec.rejected_shards))
        stats_lib.bump(stats, "duplicates", keys.column("source")[index].as_py())
    rows = order.to_numpy().astype(np.int64)[first]  # one copy each, by example id
    repeat = None
    if spec.mixing is not None:
        rows, repeat = apply_mixture(table, rows, spec.mixing, plan or {}, stats)
    name = shard_name(shard, spec.shard_counts[split], ".parquet")
    if spec.pack_length:  # tokens gathered once, from the pieces straight into the packs
        data, count = encode_packed(table, spec.pack_length, stats, split, rows, repeat)
        written = table.select(["source", "num_trainable_tokens", "truncation"]).take(rows)
        _shard_stats(stats, split, written,
                     pc.list_value_length(table.column("input_ids")).to_numpy()[rows])
    else:
        table = table.take(rows)
        if repeat is not None:  # a mixture's: which copy of its example each row is
            table = table.append_column("repeat", pa.array(repeat, pa.int32()))
        data, count = encode_parquet(table), table.num_rows
        _shard_stats(stats, split, table, pc.list_value_length(table.column("input_ids")).to_numpy())
    return WrittenShard(_write_file(spec.output, split, name, count, data), stats, duplicates)


def write_pieces(spec: ShardSpec, split: str, shard: int, pieces: Sequence[str],
                 plan: Optional[Dict[str, SourcePlan]] = None) -> WrittenShard:
    """A shard's piece files (prepare.ShardPieces) -> its Parquet file (`write_shard`); then
    the pieces are deleted."""
    pieces = sorted(pieces)
    written = write_shard(spec, split, shard, read_pieces(pieces), plan)
    files.delete(pieces)
    return written


def _write_file(output: str, folder: str, name: str, rows: int, data: bytes) -> Dict[str, Any]:
    """Write OUT/folder/name; its manifest entry (`folder` is the split, or "rejected")."""
    files.write_bytes(files.join(output, folder, name), data)
    return {"path": f"{folder}/{name}", "split": folder, "rows": rows, "bytes": len(data),
            "sha256": files.sha256_hex(data)}


def _duplicate_row(table: pa.Table, index: int, first: np.ndarray, rejected_shards: int):
    kept = int(np.flatnonzero(first[: index + 1])[-1])
    source, line = table.column("source")[index].as_py(), table.column("source_line")[index].as_py()
    detail = (f"same example_id {table.column('example_id')[index].as_py()} as "
              f"{table.column('source')[kept].as_py()}:{table.column('source_line')[kept].as_py()}")
    return keyed_rejection(Rejection(source, line, DUPLICATE_REASON, detail, None),
                           rejected_shards)


def pieces_totals(spec: ShardSpec, pieces: Sequence[str]):
    """`kept_totals` of a shard's piece files."""
    return kept_totals(read_pieces(sorted(pieces)), spec.mixing, spec.source_order)


def kept_totals(table: pa.Table, mixing: Mixing, source_order: Tuple[str, ...]):
    """A shard's units by source and draw bucket, over the rows deduplication keeps (None for
    an empty shard); `mix.add_totals` sums them into what `Mixing.plan` takes."""
    if table.num_rows == 0:
        return None
    order, _, first = dedup(table, source_order)
    kept = table.select(["example_id", "source", "num_trainable_tokens"]).take(
        order.filter(pa.array(first)))
    codes, tags = _source_codes(kept)
    return coded_totals(draws(kept.column("example_id").to_pylist(), mixing.seed),
                        codes, tags, kept.column("num_trainable_tokens").to_numpy(), mixing.unit)


def write_rejected(output: str, shard: int, shards: int,
                   rows: Iterable[Tuple[str, int, str, str]]) -> Dict[str, Any]:
    """rejected/part-NNNNN-of-MMMMM.jsonl, its rows sorted by source and line; its manifest
    entry."""
    lines = [row[3] for row in sorted(rows, key=lambda r: r[:3])]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    return _write_file(output, "rejected", shard_name(shard, shards, ".jsonl"), len(lines), data)


def dedup(table: pa.Table, source_order: Tuple[str, ...]):
    """(sort order, the sorted keys, a mask of the rows kept): the first of each example id
    keeps it, in the order of `_dedup_order`."""
    order = _dedup_order(table, source_order)
    keys = table.select(["example_id", "source", "source_line"]).take(order)
    ids = keys.column("example_id").combine_chunks()
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(
            zero_copy_only=False)
    return order, keys, first


def _dedup_order(table: pa.Table, source_order: Tuple[str, ...]) -> pa.Array:
    """Rows sorted by example id, then by the source's place in `sources` (the first keeps a
    duplicate), then by source file and line."""
    keys = [("example_id", "ascending")]
    if source_order:
        rank = {name: index for index, name in enumerate(source_order)}
        codes, tags = _source_codes(table)
        by_tag = np.array([rank.get(source_name(t), len(rank)) for t in tags], np.int32)
        table = table.append_column("_rank", pa.array(by_tag[codes], pa.int32()))
        keys.append(("_rank", "ascending"))
    keys += [("source", "ascending"), ("source_line", "ascending")]
    return pc.sort_indices(table, sort_keys=keys)


def _source_codes(table: pa.Table) -> "tuple[np.ndarray, List[str]]":
    """Each row's index into the distinct `source` tags, and those tags (first appearance)."""
    encoded = pc.dictionary_encode(table.column("source").combine_chunks())
    return (encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            encoded.dictionary.to_pylist())


def apply_mixture(table: pa.Table, rows: np.ndarray, mixing: Mixing,
                  plan: Dict[str, SourcePlan], stats: stats_lib.Stats
                  ) -> "tuple[np.ndarray, np.ndarray]":
    """The shard's rows (positions in `table`) with each of the unique `rows` as many times as
    the plan says, and which copy each is (0 for the first); rows with no copy are counted as
    sampled out. The counts go into `stats` per source, never per row."""
    kept = table.select(["example_id", "source", "num_trainable_tokens"]).take(rows)
    codes, tags = _source_codes(kept)
    values = draws(kept.column("example_id").to_pylist(), mixing.seed)
    copies = mixing.coded_copies(plan, values, codes, tags)
    trainable = kept.column("num_trainable_tokens").to_numpy().astype(np.int64)
    width = len(tags)
    sampled_out = np.bincount(codes[copies == 0], minlength=width)
    repeated = copies > 1
    extra = _sums(codes[repeated], copies[repeated] - 1, width)  # > 0 where a row repeats
    copies_by_tag = _sums(codes, copies, width)  # > 0 where a row is written
    tokens_by_tag = _sums(codes, copies * trainable, width)
    for code, tag in enumerate(tags):
        if sampled_out[code]:
            stats_lib.bump(stats, "sampled_out", tag, by=int(sampled_out[code]))
        if extra[code]:
            stats_lib.bump(stats, "repeats", tag, by=int(extra[code]))
        if copies_by_tag[code]:
            stats_lib.bump(stats, "mix_rows", source_name(tag), by=int(copies_by_tag[code]))
            stats_lib.bump(stats, "mix_trained_tokens", source_name(tag),
                           by=int(tokens_by_tag[code]))
    starts = np.repeat(np.cumsum(copies) - copies, copies)
    repeat = (np.arange(int(copies.sum())) - starts).astype(np.int32)
    return np.repeat(rows, copies), repeat


def _sums(codes: np.ndarray, amounts: np.ndarray, width: int) -> np.ndarray:
    """Exact integer sums of `amounts` by code."""
    out = np.zeros(width, dtype=np.int64)
    np.add.at(out, codes, amounts)
    return out


def encode_parquet(table: pa.Table) -> bytes:
    """The output rows, in the output schema, as deterministic zstd Parquet bytes."""
    input_ids = table.column("input_ids")
    num_tokens = pc.list_value_length(input_ids).cast(pa.int32())
    truncated = pc.not_equal(table.column("truncation"), "")
    columns = [input_ids, table.column("labels"), num_tokens,
               table.column("num_trainable_tokens"), table.column("example_id"),
               table.column("source"), table.column("source_line"), truncated]
    schema = OUTPUT_SCHEMA
    if "repeat" in table.column_names:  # a mixture's run: which copy of the example
        columns.append(table.column("repeat"))
        schema = schema.append(pa.field("repeat", pa.int32()))
    return _parquet_bytes(pa.table(columns, schema=schema))


def pack_table(table: pa.Table, pack_length: int, packer: str = DEFAULT_PACKER,
               rows: Optional[np.ndarray] = None, repeat: Optional[np.ndarray] = None
               ) -> pa.Table:
    """A shard's examples (sorted by example id, one copy each) packed into rows of at most
    `pack_length` tokens, in PACKED_SCHEMA (see sftprep/transforms/pack.py for the order).

    `rows`: the positions in `table` of the shard's examples, in order (default: every row, as
    it stands); `repeat`: which copy of its example each is (a mixture's; default the table's
    `repeat` column, if any). Tokens are gathered once, from the table's buffers into the packs;
    no per-example table is built first."""
    input_ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels").combine_chunks()
    offsets = _list_offsets(input_ids)
    if rows is None:
        rows = np.arange(table.num_rows, dtype=np.int64)
    if repeat is None and "repeat" in table.column_names:
        repeat = table.column("repeat").to_numpy()
    starts, lengths = offsets[:-1][rows], np.diff(offsets)[rows]
    packs = pack_lib.PACKERS[packer](lengths, pack_length)
    packed = pack_lib.pack_columns(_values(input_ids), _values(labels), starts, lengths, packs)
    order = pa.array(rows[packed.order])  # the table's rows, in pack order
    per_example = pa.array(packed.example_offsets.astype(np.int32))
    per_token = pa.array(packed.offsets.astype(np.int32))

    def examples_list(column: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(per_example, column.take(order))

    def tokens_list(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(per_token, pa.array(values, pa.int32()))

    starts = packed.offsets
    trained = packed.labels != pack_lib.IGNORE_INDEX
    trainable = np.add.reduceat(trained, starts[:-1], dtype=np.int64) if len(packs) else \
        np.zeros(0, np.int64)
    trainable[np.diff(starts) == 0] = 0  # reduceat of an empty range returns the next value
    truncated = pc.not_equal(table.column("truncation"), "").combine_chunks()
    packed_table = pa.table([
        tokens_list(packed.input_ids), tokens_list(packed.labels),
        tokens_list(packed.position_ids),
        pa.ListArray.from_arrays(per_example, pa.array(packed.seq_lengths, pa.int32())),
        pa.array(np.diff(starts).astype(np.int32)), pa.array(trainable.astype(np.int32)),
        examples_list(table.column("example_id").combine_chunks()),
        examples_list(table.column("source").combine_chunks()),
        examples_list(table.column("source_line").combine_chunks()),
        examples_list(truncated),
    ], schema=PACKED_SCHEMA)
    if repeat is not None:  # a mixture's run: which copy each example is
        packed_table = packed_table.append_column(
            pa.field("repeats", pa.list_(pa.int32())),
            pa.ListArray.from_arrays(per_example,
                                     pa.array(np.asarray(repeat)[packed.order], pa.int32())))
    return packed_table


def encode_packed(table: pa.Table, pack_length: int, stats: stats_lib.Stats, split: str,
                  rows: Optional[np.ndarray] = None, repeat: Optional[np.ndarray] = None
                  ) -> "tuple[bytes, int]":
    """The shard's packed rows as Parquet bytes, and how many; the packing's numbers go into
    `stats` (packs, their capacity, lengths and examples per pack). `rows`, `repeat`: as
    `pack_table` takes them."""
    packed = pack_table(table, pack_length, rows=rows, repeat=repeat)
    if packed.num_rows:
        lengths = packed.column("num_tokens").to_numpy()
        counts = pc.list_value_length(packed.column("seq_lengths")).to_numpy()
        stats_lib.bump(stats, "packing", split, "packs", by=packed.num_rows)
        stats_lib.bump(stats, "packing", split, "examples", by=int(counts.sum()))
        stats_lib.bump(stats, "packing", split, "tokens", by=int(lengths.sum()))
        stats_lib.bump(stats, "packing", split, "capacity", by=packed.num_rows * pack_length)
        for value, count in zip(*np.unique(lengths, return_counts=True)):
            stats_lib.bump(stats, "pack_lengths", split, str(int(value)), by=int(count))
        for value, count in zip(*np.unique(counts, return_counts=True)):
            stats_lib.bump(stats, "pack_examples", split, str(int(value)), by=int(count))
    return _parquet_bytes(packed), packed.num_rows


def _list_offsets(column: pa.Array) -> np.ndarray:
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _values(column: pa.Array) -> np.ndarray:
    """The flattened values of a list column (the rows' own values, whatever its offsets)."""
    return column.flatten().to_numpy(zero_copy_only=False)


# Dictionary encoding only where values repeat (source names). On token ids, labels, example ids
# and line numbers a dictionary then zstd costs more CPU and gives larger files than plain then
# zstd: measured on the 8,723-row shard of gsm8k + alpaca + glaive (plain and packed), 15-20%
# less writer CPU and 11% smaller files, the same values.
DICTIONARY_COLUMNS = ["source", "sources"]


def _parquet_bytes(out: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(out, sink, compression="zstd", compression_level=3,
                   row_group_size=ROW_GROUP_SIZE, write_statistics=True,
                   use_dictionary=DICTIONARY_COLUMNS)
    return sink.getvalue()


def _shard_stats(stats: stats_lib.Stats, split: str, table: pa.Table,
                 lengths: np.ndarray) -> None:
    """The written examples' counts: `table` holds their source, num_trainable_tokens and
    truncation, `lengths` their token counts."""
    if table.num_rows == 0:
        return
    trainable = table.column("num_trainable_tokens").to_numpy()
    for entry in pc.value_counts(table.column("source")).to_pylist():
        stats_lib.bump(stats, "written", split, entry["values"], by=entry["counts"])
    stats_lib.bump(stats, "tokens", split, "total", by=int(lengths.sum()))
    stats_lib.bump(stats, "tokens", split, "trainable", by=int(trainable.sum()))
    for value, count in zip(*np.unique(lengths, return_counts=True)):
        stats_lib.bump(stats, "lengths", split, str(int(value)), by=int(count))
    for value, count in zip(*np.unique(trainable, return_counts=True)):
        stats_lib.bump(stats, "trainable_lengths", split, str(int(value)), by=int(count))
    truncated = table.filter(pc.not_equal(table.column("truncation"), ""))
    for reasons, source in zip(truncated.column("truncation").to_pylist(),
                               truncated.column("source").to_pylist()):
        stats_lib.bump(stats, "rows_truncated")
        stats_lib.bump(stats, stats_lib.TRUNCATED_BY_SOURCE, source)
        for reason in reasons.split(","):
            stats_lib.bump(stats, "truncated", reason)
