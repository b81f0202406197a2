"""The per-batch work of the pipeline: raw records in, examples and accounted rejections out.

This is the whole example path (parse, normalize, render, tokenize, mask, truncate, assign a
shard) as one pure function over a batch, so the Beam side stays a thin loop around it and
`tests/` can exercise every decision without Beam.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Executor, Future
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sftprep.transforms import stats as stats_lib
from sftprep.transforms.formats import parse_record
from sftprep.transforms.mix import source_name
from sftprep.transforms.normalize import normalize_conversation, normalize_role
from sftprep.transforms.records import Conversation, Message, RawRecord, Rejection
from sftprep.transforms.rows import Example, ExampleRows
from sftprep.transforms.settings import ExampleSettings
from sftprep.transforms.shard import assign
from sftprep.transforms.templates import (
    BUILTIN_TEMPLATES, DEFAULT_REWRITTEN_TURNS, DEFAULT_TEMPLATE_DATE, Rendered, TemplateError,
    TemplateLimitError, TemplateSpec, render, render_examples, resolve_template)
from sftprep.transforms.tokenize import (
    Encoded, LabelledBatch, Tokens, TokenizerRuntime, encode_texts, find_hostile, label_batch,
    plain_texts, tokenize_batch, tokens_of)
from sftprep.transforms.truncate import (
    Dropped, Fitted, Truncation, estimate_exchanges_to_drop, exchange_starts, fewest_that_fit, fit,
    trainable_count, without_oldest_exchanges)
from sftprep.transforms.vocab import TokenizerInfo, TokenizerSource, load_tokenizer_source


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    """One source's own way of reading (a `sources:` entry); None / empty: the run's setting."""

    format: Optional[str] = None
    field_map: Tuple[Tuple[str, str], ...] = ()
    system: str = ""  # a system prompt for records that have none
    train_on: Optional[str] = None
    validation_fraction: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class PrepareSettings(ExampleSettings):
    """The example settings with what the launch resolved: the template, the shard counts
    (small, picklable)."""

    template: TemplateSpec = dataclasses.field(kw_only=True)
    num_shards: int = 1
    validation_shards: int = 1
    pack_length: int = 0  # the shard writer packs rows of at most this many tokens; 0: off
    # Per source (a record's `source` is NAME/FILE): (NAME, its settings), from `sources:`.
    sources: Tuple[Tuple[str, SourceSettings], ...] = ()
    system: str = ""

    @property
    def any_validation(self) -> bool:
        return self.validation_fraction > 0 or any(
            (s.validation_fraction or 0) > 0 for _, s in self.sources)

    def for_source(self, tag: str) -> "PrepareSettings":
        """The settings of the source a record's `source` tag names (these, without sources)."""
        if not self.sources:
            return self
        own = dict(self.sources).get(source_name(tag))
        if own is None:
            return self
        return dataclasses.replace(
            self, sources=(), format=own.format or self.format,
            field_map=own.field_map or self.field_map, system=own.system or self.system,
            train_on=own.train_on or self.train_on,
            validation_fraction=self.validation_fraction if own.validation_fraction is None
            else own.validation_fraction)


def resolve_template_and_tokenizer(
        tokenizer: str, template_name: str, read_file: Callable[[str], str], *,
        template_kwargs: Sequence[Tuple[str, str]] = (), template_date: str = DEFAULT_TEMPLATE_DATE,
        stop_tokens: Sequence[str] = (), rewritten_turns: str = DEFAULT_REWRITTEN_TURNS
) -> Tuple[TemplateSpec, TokenizerSource, Dict[str, bytes], TokenizerInfo]:
    """Load --tokenizer (a local folder or a name), resolve --template against it and add the
    template's control tokens: the template, the tokenizer, its files (name -> bytes), its info.
    What `run`'s launcher saves next to the data and what `inspect` renders with.

    A Jinja template's stop strings are --stop-tokens, then the tokenizer's
    generation_config.json stop tokens, then the terminators the template writes itself.
    """
    source = load_tokenizer_source(tokenizer)
    # A Jinja template writes no tokens of its own, so the tokenizer's special tokens are final
    # here: they are the control tokens data may spell.
    control = () if template_name in BUILTIN_TEMPLATES else tuple(
        t.content for t in source.backend().get_added_tokens_decoder().values() if t.special)
    template = resolve_template(template_name, bos=source.bos, eos=source.eos, sep=source.sep,
                                tokenizer_chat_template=source.chat_template, read_file=read_file,
                                variables=template_kwargs, date=template_date,
                                stop=(*stop_tokens, *source.generation_stop_tokens()),
                                control_tokens=control, rewritten_turns=rewritten_turns)
    if not template.eos and template.name != "jinja":
        raise ValueError(f"--tokenizer {tokenizer} defines no EOS token, which the "
                         f"{template.name} template closes assistant turns with")
    tokenizer_files, info = source.with_tokens(template.special_tokens())
    return template, source, tokenizer_files, info


@dataclasses.dataclass
class PreparedBatch:
    rows: ExampleRows
    rejected: List[Rejection]  # parse / normalize / render failures
    dropped: List[Rejection]  # could not become a trainable example
    stats: stats_lib.Stats

    @property
    def examples(self) -> List[Example]:
        return self.rows.examples()


@dataclasses.dataclass
class _Pending:
    raw: RawRecord
    conv: Conversation
    rendered: Rendered
    example_id: str
    settings: PrepareSettings  # its source's (train_on, validation_fraction)
    tokens: Optional[Tokens] = None
    reasons: Tuple[Truncation, ...] = ()  # truncation already applied (oldest turns dropped)


@dataclasses.dataclass
class StartedBatch:
    """A batch parsed and rendered, its tokenization possibly still running elsewhere."""

    pending: List[_Pending]
    rejected: List[Rejection]
    stats: stats_lib.Stats
    hostile: List[bool]
    encoded: Union[Encoded, "Future"]


def start_batch(records: Sequence[RawRecord], settings: PrepareSettings,
                runtime: TokenizerRuntime, executor: Optional[Executor] = None) -> StartedBatch:
    """Parse, normalize and render; start tokenizing (on `executor` when given)."""
    stats: stats_lib.Stats = {}
    rejected: List[Rejection] = []
    pending: List[_Pending] = []
    own: Dict[str, PrepareSettings] = {}
    for raw in records:
        stats_lib.bump(stats, "read", raw.source)
        if raw.source not in own:
            own[raw.source] = settings.for_source(raw.source)
        outcome = examples_of(raw, own[raw.source])
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
            stats_lib.bump(stats, "rejected", raw.source, outcome.reason)
            continue
        if outcome[-1][1].rewritten:
            stats_lib.bump(stats, "rewritten_turns", settings.template.rewritten_turns)
        if len(outcome) > 1:  # --rewritten-turns split: the examples beyond the record's first
            stats_lib.bump(stats, "split_examples", raw.source, by=len(outcome) - 1)
        for conv, rendered in outcome:
            pending.append(_Pending(raw, conv, rendered, conv.example_id(), own[raw.source]))
    rendered = [p.rendered for p in pending]
    hostile = find_hostile(runtime, rendered)
    texts = plain_texts(rendered, hostile)
    encoded = executor.submit(encode_texts, runtime, texts) if executor is not None \
        else encode_texts(runtime, texts)
    return StartedBatch(pending, rejected, stats, hostile, encoded)


def finish_batch(started: StartedBatch, settings: PrepareSettings,
                 runtime: TokenizerRuntime) -> PreparedBatch:
    """Labels, truncation, the trainable-token floor, and split/shard assignment.

    Examples labelled exactly by the batch-wide path that fit as they are (the common case)
    stay columnar throughout; the others go through the per-example path.
    """
    pending, stats = started.pending, started.stats
    encoded = started.encoded.result() if isinstance(started.encoded, Future) \
        else started.encoded
    plain = [i for i, hostile in enumerate(started.hostile) if not hostile]
    labelled = label_batch(runtime, [pending[i].rendered.trained_spans(pending[i].settings.train_on)
                                     for i in plain], encoded)
    fast = labelled.exact & (labelled.lengths <= settings.max_length) \
        & (labelled.trainable >= settings.min_trainable_tokens)
    fast_rows = _columnar_rows([pending[i] for i in plain], labelled, fast, settings)

    done = {plain[i] for i in np.flatnonzero(fast).tolist()}
    in_batch = {index: position for position, index in enumerate(plain)}
    slow_indexes = [index for index in range(len(pending)) if index not in done]
    # The whole-text Encodings of the slow ones in the batch call (the hostile ones, tokenized
    # piece by piece, have none).
    positions = [in_batch[i] for i in slow_indexes if i in in_batch]
    encodings = dict(zip(positions, encoded.encodings_at(positions, runtime)))
    slow = []
    for index in slow_indexes:
        item = pending[index]
        encoding = encodings[in_batch[index]] if index in in_batch else None
        item.tokens = tokens_of(runtime, item.rendered,
                                item.rendered.trained_spans(item.settings.train_on), encoding)
        slow.append(item)
    examples, dropped = _fit_one_by_one(slow, settings, runtime, stats)
    return PreparedBatch(ExampleRows.concat([fast_rows, ExampleRows.of(examples)]),
                         started.rejected, dropped, stats)


def _columnar_rows(items: Sequence[_Pending], labelled: LabelledBatch, fast: np.ndarray,
                   settings: PrepareSettings) -> ExampleRows:
    """The rows of the examples `fast` selects, straight from the batch's arrays."""
    chosen = np.flatnonzero(fast)
    lengths = labelled.lengths
    tokens = np.repeat(fast, lengths)
    offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum(lengths[chosen], out=offsets[1:])
    picked = [items[i] for i in chosen.tolist()]
    places = [assign(p.example_id, settings.seed, p.settings.validation_fraction,
                     settings.num_shards, settings.validation_shards) for p in picked]
    return ExampleRows(
        [p.example_id for p in picked], [p.raw.source for p in picked],
        np.fromiter((p.raw.line for p in picked), np.int64, len(picked)),
        labelled.input_ids[tokens], labelled.labels[tokens], offsets,
        labelled.trainable[chosen].astype(np.int32), [()] * len(picked),
        [split for split, _ in places], np.fromiter((s for _, s in places), np.int64, len(places)))


def _fit_one_by_one(items: List[_Pending], settings: PrepareSettings, runtime: TokenizerRuntime,
                    stats: stats_lib.Stats) -> Tuple[List[Example], List[Rejection]]:
    """The per-example path: drop oldest turns, fit, the trainable floor, split and shard."""
    if settings.truncation == "drop_oldest_turns":
        _drop_oldest_turns(items, settings, runtime)
    examples: List[Example] = []
    dropped: List[Rejection] = []
    for item in items:
        result = fit(item.tokens, item.rendered, settings.truncation, settings.max_length)
        if isinstance(result, Fitted):
            trainable = trainable_count(result.tokens)
            if trainable < settings.min_trainable_tokens:
                result = Dropped("no_trainable_tokens",
                                 f"{trainable} trained tokens < --min-trainable-tokens "
                                 f"{settings.min_trainable_tokens}")
        if isinstance(result, Dropped):
            dropped.append(Rejection(item.raw.source, item.raw.line, result.reason, result.detail,
                                     item.raw.text))
            stats_lib.bump(stats, "dropped", item.raw.source, result.reason)
            continue
        split, shard = assign(item.example_id, settings.seed, item.settings.validation_fraction,
                              settings.num_shards, settings.validation_shards)
        examples.append(Example(item.example_id, item.raw.source, item.raw.line,
                                result.tokens.input_ids, result.tokens.labels, trainable,
                                item.reasons + result.reasons, split, shard))
    return examples, dropped


def prepare_batch(records: Sequence[RawRecord], settings: PrepareSettings,
                  runtime: TokenizerRuntime) -> PreparedBatch:
    """The whole example path for one batch, synchronously."""
    return finish_batch(start_batch(records, settings, runtime), settings, runtime)


def conversation_of(raw: RawRecord, settings: PrepareSettings
                    ) -> Union[Tuple[Conversation, Rendered], Rejection]:
    """Parse, normalize and render one record, or say why not (under --rewritten-turns split,
    the record's last example)."""
    outcome = examples_of(raw, settings)
    return outcome if isinstance(outcome, Rejection) else outcome[-1]


def examples_of(raw: RawRecord, settings: PrepareSettings
                ) -> Union[List[Tuple[Conversation, Rendered]], Rejection]:
    """Parse, normalize and render one record into its examples, or say why not.

    One example per record, except under --rewritten-turns split: one per trained assistant
    turn of a record the template rewrites, each with the conversation up to that turn (its
    example_id is that conversation's; all carry the record's source and line).
    """
    settings = settings.for_source(raw.source)
    parsed = parse_record(raw, settings.format, settings.field_map)
    if isinstance(parsed, Rejection):
        return parsed
    if settings.system and not any(normalize_role(m.role) == "system" for m in parsed.messages):
        parsed = dataclasses.replace(parsed, messages=(Message("system", settings.system),
                                                       *parsed.messages))
    normalized = normalize_conversation(parsed, settings.max_messages, settings.reasoning)
    if isinstance(normalized, tuple):
        return Rejection(raw.source, raw.line, normalized[0], normalized[1], raw.text)
    try:
        return render_examples(normalized, settings.template, settings.train_on)
    except TemplateLimitError as err:
        return Rejection(raw.source, raw.line, "template_limit", str(err), raw.text)
    except TemplateError as err:
        return Rejection(raw.source, raw.line, "template_error", str(err), raw.text)


def _drop_oldest_turns(pending: Sequence[_Pending], settings: PrepareSettings,
                       runtime: TokenizerRuntime) -> None:
    """Re-render each too-long dialogue without its oldest exchanges: the fewest that make it
    fit, else all but the last (keep_completion then cuts it).

    The same outcome as dropping one exchange at a time until it fits, in near-linear time:
    the whole dialogue's token positions estimate the count, one re-render confirms it (and one
    more that a count lower does not fit), and a binary search settles an estimate that was off.
    The search relies on length falling as exchanges go. A shortened dialogue the template
    cannot render counts as not fitting; when even the shortest cannot render, the dialogue
    stays whole.
    """
    for item in pending:
        if len(item.tokens.input_ids) <= settings.max_length:
            continue
        most = len(exchange_starts(item.conv)) - 1
        if most < 1:
            continue
        tried: Dict[int, Optional[Tuple[Conversation, Rendered, Tokens]]] = {}

        def attempt(count: int) -> Optional[Tuple[Conversation, Rendered, Tokens]]:
            if count not in tried:
                conv = without_oldest_exchanges(item.conv, count)
                try:
                    rendered = render(conv, settings.template)
                except TemplateError:
                    tried[count] = None
                else:
                    [tokens] = tokenize_batch(runtime, [rendered],
                                              [rendered.trained_spans(item.settings.train_on)])
                    tried[count] = (conv, rendered, tokens)
            return tried[count]

        def fits(count: int) -> bool:
            result = attempt(count)
            return result is not None and len(result[2].input_ids) <= settings.max_length

        guess = estimate_exchanges_to_drop(item.conv, item.rendered, item.tokens,
                                           settings.max_length)
        chosen = attempt(fewest_that_fit(fits, guess, most))
        if chosen is not None:
            item.conv, item.rendered, item.tokens = chosen
            item.reasons = (Truncation.OLDEST_TURNS_DROPPED,)
