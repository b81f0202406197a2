"""The pipeline's Parquet shards as a stream of examples: streaming, shuffled by seed, split
between ranks, and resumable at an exact position.

The train split is cut into blocks (row ranges of a Parquet row group) from the files'
metadata alone. Each epoch the blocks are permuted with a seed every rank shares and dealt
round-robin, so ranks read disjoint blocks. A rank reads its blocks a window at a time and
shuffles the rows inside the window, so memory holds one window, never the split. The order
is a pure function of (seed, epoch, rank, world size), which is what makes a position
(epoch, rows consumed) enough to resume exactly.

The data is checked as it streams, never in an extra pass over it. At launch, from each
shard's footer only: it is Parquet, and `input_ids` / `labels` are lists of integers beside a
string `example_id` (float ids are refused, not truncated), and the split's shards are all
packed or all unpacked (a mix is refused then, whatever the windows would hold); where the
footer's min/max statistics already show a value out of range, that row group alone is read
to name the row (`check_statistics`). Then every window, vectorized as it is read: no
nulls, a label per token, ids in [0, vocab), labels -100 or in [0, vocab) (`checked_values`).
A value that fails names the file and row (`DatasetError`, one line). Statistics alone never
pass a value: they cannot see a label of -5 between -100 and the maximum, and a file may carry
none. One trained token is looked for at launch (`has_trained_token`), reading until the
first it finds and skipping row groups whose statistics show only -100.

A packed dataset (`sftprep run --pack-length`) streams the same way, a stored pack per row:
its `example_ids` and `seq_lengths` come along as `Members` (checked to split the row), and
the collator splits the pack into its examples (see collate.py). Either way the stream yields
`TrainingSequence`s: one example, or one stored pack of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sftprep import dataset, storage
from sftprep.dataset import IGNORE_INDEX, TRAIN
from sftprep.errors import ConfigError, DatasetError

COLUMNS = ["input_ids", "labels", "example_id"]
PACKED_COLUMNS = ["input_ids", "labels", "example_ids", "seq_lengths"]  # `run --pack-length`
MAX_BLOCK_ROWS = 256  # the unit dealt to ranks; small enough to balance, large enough to read well
BLOCKS_PER_RANK = 8  # smaller blocks on small splits so every rank still gets several
WINDOW_BLOCKS = 16  # blocks shuffled together: at most 16 x 256 rows in memory per rank
READ_BATCH_ROWS = 256  # rows decoded at a time while reading a window


def open_dataset(location: str) -> dataset.OutputDataset:
    """The dataset an `sftprep run --output` folder holds (its published LATEST run), opened
    from its checked manifest; its tokenizer files are checked now, not when the model is
    saved. A malformed LATEST or manifest, or a path leading out of the dataset, is a
    DatasetError (one line)."""
    opened = dataset.open_output(location)
    opened.tokenizer_files()
    if not opened.shards(TRAIN):
        raise ConfigError(f"--data {location}: no train rows in {opened.root} (its manifest "
                          "lists no train shard with rows)")
    return opened


@dataclasses.dataclass(frozen=True)
class Members:
    """The examples of a packed row, in order: their ids and token counts."""

    example_ids: Tuple[str, ...]
    seq_lengths: np.ndarray  # int64, positive, summing to the row's length


@dataclasses.dataclass(frozen=True)
class TrainingSequence:
    """One training sequence as stored: one example, or one packed row of a `run
    --pack-length` dataset (`members` set). Not `transforms.rows.Example`, the pipeline's
    tokenized example before it is written."""

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, -100 where not trained
    example_id: str
    members: Optional[Members] = None

    def unpacked(self) -> List["TrainingSequence"]:
        """The examples of a packed row, each its own slice (labels as stored: an example's
        first label is -100); an unpacked example is its own only member."""
        if self.members is None:
            return [self]
        ends = np.cumsum(self.members.seq_lengths)
        return [TrainingSequence(self.input_ids[end - n:end], self.labels[end - n:end],
                                 example_id)
                for example_id, n, end in zip(self.members.example_ids,
                                              self.members.seq_lengths.tolist(), ends.tolist())]


@dataclasses.dataclass(frozen=True)
class Block:
    """Rows [start, stop) of one row group of one shard."""

    path: str
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a rank's stream is: the epoch, and how many of its rows this epoch were used."""

    epoch: int = 0
    offset: int = 0


def block_rows_for(total_rows: int, world_size: int) -> int:
    """Rows per block: at most 256, and small enough that each rank gets about 8 blocks.

    >>> block_rows_for(100_000, 8), block_rows_for(48, 2)
    (256, 3)
    """
    return max(1, min(MAX_BLOCK_ROWS, math.ceil(total_rows / (world_size * BLOCKS_PER_RANK))))


def list_blocks(paths: Sequence[str], world_size: int,
                vocab_size: Optional[int] = None) -> List[Block]:
    """The blocks of these shards, in file order, from the Parquet footers only (each footer's
    schema checked by `dataset.check_schema`; with `vocab_size`, its statistics by
    `check_statistics`).

    The shards of a split are all packed or all unpacked: a mix is a DatasetError naming one
    shard of each, here, before any row is read (a window may never hold both kinds)."""
    groups = []
    first_of_kind: Dict[bool, str] = {}  # packed or not -> the first such shard
    for path in paths:
        with dataset.parquet_errors(path), storage.open_read(path) as handle:
            parquet = pq.ParquetFile(handle)
            packed = dataset.is_packed(parquet.schema_arrow)
            dataset.check_schema(parquet.schema_arrow, path,
                                 PACKED_COLUMNS if packed else COLUMNS)
            first_of_kind.setdefault(packed, path)
            if len(first_of_kind) > 1:
                raise DatasetError(f"{first_of_kind[True]} holds packed rows and "
                                   f"{first_of_kind[False]} does not; a split is packed "
                                   "throughout or not at all")
            if vocab_size is not None:
                check_statistics(parquet, path, vocab_size)
            metadata = parquet.metadata
        groups += [(path, g, metadata.row_group(g).num_rows) for g in range(metadata.num_row_groups)]
    size = block_rows_for(sum(rows for _, _, rows in groups), world_size)
    return [Block(path, group, start, min(start + size, rows))
            for path, group, rows in groups for start in range(0, rows, size)]


def find_bad_value(ids: np.ndarray, labels: np.ndarray, id_offsets: np.ndarray,
                   label_offsets: np.ndarray, vocab_size: int) -> Optional[Tuple[int, str]]:
    """The first row whose values the trainer cannot use, and what is wrong; None if all fit.

    Vectorized over the whole window: a few numpy passes, no per-token Python.

    >>> o = np.array([0, 2, 4])
    >>> find_bad_value(np.array([1, 2, 3, 9]), np.array([-100, 2, 3, 9]), o, o, 9)
    (1, 'input_ids holds 9, outside [0, 9) (the vocabulary)')
    >>> find_bad_value(np.array([1, 2, 3, 4]), np.array([-100, 2, -5, 4]), o, o, 9)
    (1, 'labels holds -5; a label is -100 (not trained) or in [0, 9)')
    """
    id_lengths, label_lengths = np.diff(id_offsets), np.diff(label_offsets)
    if not np.array_equal(id_lengths, label_lengths):
        row = int(np.flatnonzero(id_lengths != label_lengths)[0])
        return row, (f"labels has {int(label_lengths[row])} values and input_ids "
                     f"{int(id_lengths[row])}; they must have one label per token")
    bad_ids = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    bad_labels = np.flatnonzero((labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size)))
    found = []
    if bad_ids.size:
        found.append((int(bad_ids[0]), f"input_ids holds {int(ids[bad_ids[0]])}, outside "
                                       f"[0, {vocab_size}) (the vocabulary)"))
    if bad_labels.size:
        found.append((int(bad_labels[0]), f"labels holds {int(labels[bad_labels[0]])}; a label "
                                          f"is -100 (not trained) or in [0, {vocab_size})"))
    if not found:
        return None
    position, message = min(found)
    return int(np.searchsorted(id_offsets, position, side="right")) - 1, message


def null_problem(input_ids: pa.Array, labels: pa.Array) -> Optional[Tuple[int, str]]:
    """The first row of these list columns that is null or holds a null, and which; None if
    none does."""
    for name, column in (("input_ids", input_ids), ("labels", labels)):
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            return int(np.flatnonzero(nulls)[0]), f"{name} is null"
        values = column.flatten()
        if values.null_count:
            parents = pc.list_parent_indices(column).to_numpy()
            first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            return int(parents[first]), f"{name} holds a null"
    return None


def checked_values(input_ids: pa.Array, labels: pa.Array, vocab_size: Optional[int],
                   where: Callable[[int], str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flat token ids, flat labels and row offsets of these list columns, each computed
    once, checked: no nulls (`null_problem`), then (with `vocab_size`) what `find_bad_value`
    finds. The first row that fails is a DatasetError `{where(row)}: {what}`."""
    problem = null_problem(input_ids, labels)
    if problem is not None:
        raise DatasetError(f"{where(problem[0])}: {problem[1]}")
    ids, id_offsets = input_ids.flatten().to_numpy(), _offsets(input_ids)
    label_values = labels.flatten().to_numpy()
    if vocab_size is not None:
        problem = find_bad_value(ids, label_values, id_offsets, _offsets(labels), vocab_size)
        if problem is not None:
            raise DatasetError(f"{where(problem[0])}: {problem[1]}")
    return ids, label_values, id_offsets


def check_statistics(parquet: pq.ParquetFile, path: str, vocab_size: int) -> None:
    """Fail at launch, not hours into training, when a row group's footer statistics show an
    id outside [0, vocab) or a label above vocab or below -100; the row group is then read
    (only it) to name the row. Statistics cannot show every bad value (a label of -5 hides
    between -100 and the maximum), so the window check stays; absent or forged statistics
    only move the error to the window that holds the row."""
    metadata = parquet.metadata
    leaves = _leaf_columns(metadata)
    for group in range(metadata.num_row_groups):
        found = [(metadata.row_group(group).column(leaves[name]).statistics, low)
                 for name, low in (("input_ids", 0), ("labels", IGNORE_INDEX))]
        if not any(stats is not None and stats.has_min_max and (
                stats.min < low or stats.max >= vocab_size) for stats, low in found):
            continue
        first = sum(metadata.row_group(g).num_rows for g in range(group))  # file row of batch[0]
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[group],
                                          columns=["input_ids", "labels"], use_threads=False):
            checked_values(batch.column(0), batch.column(1), vocab_size,
                           lambda row, first=first: f"{path} row {first + row}")
            first += batch.num_rows


def file_row(path: str, row_group: int, row_in_group: int) -> int:
    """The 0-based row of the whole file (footer only; used for error messages)."""
    with storage.open_read(path) as handle:
        metadata = pq.ParquetFile(handle).metadata
    return sum(metadata.row_group(g).num_rows for g in range(row_group)) + row_in_group


def has_trained_token(paths: Sequence[str]) -> bool:
    """Whether any label of these shards is not -100. The shards are those `list_blocks`
    has listed, so their schema is already checked.

    Row groups whose footer statistics say every label is -100 are skipped; the others are
    read (labels only, a batch at a time) until the first trained label, so a usable dataset
    costs one batch, and only a dataset about to be refused is read through.
    """
    for path in paths:
        with dataset.parquet_errors(path), storage.open_read(path) as handle:
            parquet = pq.ParquetFile(handle)
            metadata = parquet.metadata
            leaf = _leaf_columns(metadata)["labels"]
            for group in range(metadata.num_row_groups):
                stats = metadata.row_group(group).column(leaf).statistics
                if stats is not None and stats.has_min_max and (
                        stats.min == stats.max == IGNORE_INDEX):
                    continue
                for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS,
                                                  row_groups=[group], columns=["labels"],
                                                  use_threads=False):
                    values = batch.column(0).flatten()
                    if pc.any(pc.not_equal(values, IGNORE_INDEX)).as_py():
                        return True
    return False


def rank_blocks(blocks: Sequence[Block], *, seed: int, epoch: int, rank: int, world_size: int,
                shuffle: bool) -> List[Block]:
    """This rank's blocks for one epoch: one permutation all ranks agree on, dealt round-robin."""
    order = (np.random.default_rng([seed, epoch]).permutation(len(blocks)) if shuffle
             else np.arange(len(blocks)))
    return [blocks[i] for i in order[rank::world_size]]


@dataclasses.dataclass
class _Window:
    """Rows of consecutive blocks, flattened (one copy), in the order they are served."""

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    example_ids: List  # str per row, or Members per packed row
    order: np.ndarray

    def example(self, index: int) -> TrainingSequence:
        row = int(self.order[index])
        begin, end = self.offsets[row], self.offsets[row + 1]
        name = self.example_ids[row]
        if isinstance(name, Members):
            return TrainingSequence(self.ids[begin:end], self.labels[begin:end],
                                    ",".join(name.example_ids), name)
        return TrainingSequence(self.ids[begin:end], self.labels[begin:end], name)


def read_blocks(blocks: Sequence[Block], vocab_size: Optional[int] = None
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List]:
    """Token ids, labels, row offsets and example ids of these blocks, in block order (for
    packed shards, a `Members` per row instead of an example id). The blocks come from one
    `list_blocks` call, which has refused a split mixing packed and unpacked shards.

    A row group is decoded READ_BATCH_ROWS rows at a time, once for all of these blocks in it,
    and only up to the last row they need; only the blocks' rows are kept, so memory holds
    the blocks plus one batch, never whole row groups. The values are checked
    (`checked_values`, ranges only with `vocab_size`); a bad one is a DatasetError naming its
    file and row.
    """
    by_group: Dict[Tuple[str, int], List[Block]] = {}
    for block in blocks:
        by_group.setdefault((block.path, block.row_group), []).append(block)
    pieces: Dict[Block, List[pa.RecordBatch]] = {}
    for path in sorted({b.path for b in blocks}):
        with dataset.parquet_errors(path), storage.open_read(path) as handle:
            parquet = pq.ParquetFile(handle)
            columns = PACKED_COLUMNS if dataset.is_packed(parquet.schema_arrow) else COLUMNS
            dataset.check_schema(parquet.schema_arrow, path, columns)
            for (group_path, group), group_blocks in sorted(by_group.items()):
                if group_path == path:
                    pieces.update(_read_group(parquet, group, group_blocks, columns))
    kept = [b for b in blocks if pieces[b]]
    parts = [pa.Table.from_batches(pieces[b], schema=pieces[b][0].schema) for b in kept]
    table = pa.concat_tables(parts).combine_chunks() if parts else None
    if table is None or table.num_rows == 0:
        empty = np.zeros(0, np.int32)
        return empty, empty, np.zeros(1, np.int64), []
    starts = np.cumsum([0] + [part.num_rows for part in parts])

    def where(row: int) -> str:
        """`path row N` for row `row` of this window."""
        index = int(np.searchsorted(starts, row, side="right")) - 1
        block = kept[index]
        in_group = block.start + row - int(starts[index])
        return f"{block.path} row {file_row(block.path, block.row_group, in_group)}"

    input_ids, labels = table.column("input_ids").chunk(0), table.column("labels").chunk(0)
    ids, label_values, id_offsets = checked_values(input_ids, labels, vocab_size, where)
    if len(label_values) != len(ids):  # only reachable without vocab_size
        raise DatasetError(f"{blocks[0].path}: labels and input_ids differ in length")
    if "seq_lengths" not in table.column_names:
        return ids, label_values, id_offsets, table.column("example_id").to_pylist()
    members = []
    for row, (names, lengths) in enumerate(zip(table.column("example_ids").to_pylist(),
                                               table.column("seq_lengths").to_pylist())):
        problem = _members_problem(names, lengths, int(id_offsets[row + 1] - id_offsets[row]))
        if problem:
            raise DatasetError(f"{where(row)}: {problem}")
        members.append(Members(tuple(names), np.asarray(lengths, dtype=np.int64)))
    return ids, label_values, id_offsets, members


def _members_problem(names: Optional[list], lengths: Optional[list], tokens: int) -> str:
    """Why a packed row's example_ids / seq_lengths cannot split it ("" when they can)."""
    if names is None or lengths is None or None in names or None in lengths:
        return "example_ids or seq_lengths is null or holds a null"
    if len(names) != len(lengths) or not lengths:
        return (f"{len(names)} example_ids and {len(lengths)} seq_lengths; a packed row has "
                "one of each per example, at least one")
    if min(lengths) < 1 or sum(lengths) != tokens:
        return (f"seq_lengths {lengths[:8]}{'...' if len(lengths) > 8 else ''} do not split "
                f"its {tokens} tokens into examples of at least one token")
    return ""


def _leaf_columns(metadata: pq.FileMetaData) -> Dict[str, int]:
    """Each top-level column's leaf index in the footer (where its statistics are)."""
    return {metadata.schema.column(i).path.split(".")[0]: i for i in range(metadata.num_columns)}


def _offsets(column: pa.Array) -> np.ndarray:
    """Row starts (and the end) into the flattened values of a list column, from 0."""
    lengths = pc.list_value_length(column).to_numpy()
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _read_group(parquet: pq.ParquetFile, group: int, blocks: Sequence[Block],
                columns: Sequence[str]) -> Dict[Block, List[pa.RecordBatch]]:
    """The rows of these blocks of one row group, copied out batch by batch."""
    stop = max(b.stop for b in blocks)
    pieces: Dict[Block, List[pa.RecordBatch]] = {b: [] for b in blocks}
    begin = 0
    for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[group],
                                      columns=list(columns), use_threads=False):
        end = begin + batch.num_rows
        for block in blocks:
            low, high = max(block.start, begin), min(block.stop, end)
            if low < high:  # a copy, so the batch is freed once read
                pieces[block].append(batch.take(pa.array(np.arange(low - begin, high - begin))))
        begin = end
        if begin >= stop:
            break  # the rest of the row group is not decoded
    return pieces


class ExampleStream:
    """One rank's examples, epoch after epoch (or for `epochs` epochs), resumable at a Position.

    Each window's values are checked against `vocab_size` as it is read (None: not checked).
    `next()` returns None when the epochs are used up. `unread()` gives back the example just
    taken (the packer does that with one that does not fit); `position` then counts it as unused.
    """

    def __init__(self, blocks: Sequence[Block], *, seed: int, rank: int, world_size: int,
                 shuffle: bool, epochs: Optional[int], vocab_size: Optional[int],
                 start: Position = Position()):
        self._blocks, self._seed, self._rank, self._world = list(blocks), seed, rank, world_size
        self._vocab_size = vocab_size
        self._shuffle, self._epochs = shuffle, epochs
        self._pending: Optional[Tuple[TrainingSequence, Position]] = None
        self._seek(start)

    @property
    def position(self) -> Position:
        return self._pending[1] if self._pending else Position(self._epoch, self._offset)

    def next(self) -> Optional[TrainingSequence]:
        if self._pending:
            example, self._pending = self._pending[0], None
            return example
        while self._offset >= self._epoch_rows:
            if self._epochs is not None and self._epoch + 1 >= self._epochs:
                return None
            if self._epoch_rows == 0 and self._epoch > 0:
                return None  # a rank with no rows would otherwise loop forever
            self._seek(Position(self._epoch + 1, 0))
        if self._offset >= self._window_end:
            self._load(self._window_index + 1)
        example = self._window.example(self._offset - self._window_start)
        self._offset += 1
        return example

    def unread(self, example: TrainingSequence) -> None:
        assert self._pending is None, "only the last example can be given back"
        self._pending = (example, Position(self._epoch, self._offset - 1))

    def __iter__(self) -> Iterator[TrainingSequence]:
        while (example := self.next()) is not None:
            yield example

    def _seek(self, position: Position) -> None:
        self._epoch, self._offset = position.epoch, position.offset
        mine = rank_blocks(self._blocks, seed=self._seed, epoch=self._epoch, rank=self._rank,
                           world_size=self._world, shuffle=self._shuffle)
        self._windows = [mine[i:i + WINDOW_BLOCKS] for i in range(0, len(mine), WINDOW_BLOCKS)]
        sizes = [sum(b.rows for b in w) for w in self._windows]
        self._window_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._epoch_rows = int(self._window_starts[-1])
        if self._offset > self._epoch_rows:
            raise ConfigError(f"data position {position} is past the end of epoch {self._epoch} "
                              f"({self._epoch_rows} rows): the data changed since the checkpoint")
        if self._offset < self._epoch_rows:  # else `next` moves on before reading a window
            # The window holding the next row; earlier windows of the epoch are never read.
            self._load(int(np.searchsorted(self._window_starts, self._offset, side="right")) - 1)

    def _load(self, index: int) -> None:
        ids, labels, offsets, example_ids = read_blocks(self._windows[index], self._vocab_size)
        rows = len(example_ids)
        order = (np.random.default_rng([self._seed, self._epoch, self._rank, index])
                 .permutation(rows) if self._shuffle else np.arange(rows))
        self._window = _Window(ids, labels, offsets, example_ids, order)
        self._window_index = index
        self._window_start = int(self._window_starts[index])
        self._window_end = int(self._window_starts[index + 1])

