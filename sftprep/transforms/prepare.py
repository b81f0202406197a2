"""The per-batch work of the pipeline: raw records in, examples and accounted rejections out.

The whole example path as named steps over frozen values, so the Beam side stays a thin loop
around it and `tests/` can exercise every decision without Beam:

    render_records  records -> RenderedBatch: Candidates (parsed, normalized, rendered)
    start_batch     + the whole texts tokenized in one batch call -> StartedBatch
    finish_batch    label_batch: the whole batch labelled at once; what it labels exactly
                    and fits as it is -> labelled_rows. The rest, one by one:
                    tokenize_each -> Tokens, fit_example -> Fitted | Dropped -> fitted_rows
    build_rows      the one row builder: tokens end to end, split and shard by example id
"""

from __future__ import annotations

import dataclasses
import itertools
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
from sftprep.transforms.truncate import Dropped, Fitted, Truncation, fit, trainable_count
from sftprep.tokenizer.labels import (
    LabelledBatch, Span, Tokens, find_hostile, label_batch, tokenize_batch, tokens_of)
from sftprep.tokenizer.load import TokenizerInfo, TokenizerSource, load_tokenizer_source
from sftprep.tokenizer.runtime import Encoded, TokenizerRuntime, encode_texts


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
        own = dict(self.sources).get(source_name(tag)) if self.sources else None
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


@dataclasses.dataclass(frozen=True)
class PreparedBatch:
    rows: ExampleRows
    rejected: List[Rejection]  # parse / normalize / render failures
    dropped: List[Rejection]  # could not become a trainable example
    stats: stats_lib.Stats

    @property
    def examples(self) -> List[Example]:
        return self.rows.examples()


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One example rendered from a record, before tokens: the `render` step's output."""

    raw: RawRecord
    conv: Conversation
    rendered: Rendered
    example_id: str
    settings: PrepareSettings  # its source's (train_on, validation_fraction)
    spans: Tuple[Span, ...]  # the characters to train, for its source's --train-on


@dataclasses.dataclass(frozen=True)
class RenderedBatch:
    """A batch parsed, normalized and rendered: its candidates and its rejections."""

    candidates: Tuple[Candidate, ...]
    rejected: Tuple[Rejection, ...]
    stats: stats_lib.Stats  # read, rejected, rewritten_turns, split_examples


@dataclasses.dataclass(frozen=True)
class StartedBatch:
    """A batch rendered, its tokenization possibly still running elsewhere.

    `positions[i]` is candidate i's text in `encoded`, None for a text whose data spells a
    special token (it is tokenized piece by piece)."""

    rendered: RenderedBatch
    positions: Tuple[Optional[int], ...]
    encoded: Union[Encoded, "Future[Encoded]"]


def start_batch(records: Sequence[RawRecord], settings: PrepareSettings,
                runtime: TokenizerRuntime, executor: Optional[Executor] = None) -> StartedBatch:
    """Render, then start tokenizing the whole texts in one batch (on `executor` when given)."""
    batch = render_records(records, settings)
    hostile = find_hostile(runtime, [c.rendered for c in batch.candidates])
    texts = [c.rendered.text for c, h in zip(batch.candidates, hostile) if not h]
    before = itertools.accumulate((0 if h else 1 for h in hostile), initial=0)  # plain ones
    positions = tuple(None if h else p for h, p in zip(hostile, before))
    encoded = executor.submit(encode_texts, runtime, texts) if executor is not None \
        else encode_texts(runtime, texts)
    return StartedBatch(batch, positions, encoded)


def finish_batch(started: StartedBatch, settings: PrepareSettings,
                 runtime: TokenizerRuntime) -> PreparedBatch:
    """Labels, fit, the trainable-token floor, rows.

    The batch-wide labelling (`label_batch`) serves every example whose labels it gets exactly
    and that fits as it is (the common case): its rows come straight from the batch's arrays.
    The others are tokenized and fitted one by one.
    """
    candidates, positions = started.rendered.candidates, started.positions
    encoded = started.encoded.result() if isinstance(started.encoded, Future) \
        else started.encoded
    plain = [c for c, p in zip(candidates, positions) if p is not None]
    labelled = label_batch(runtime, [c.spans for c in plain], encoded, settings.crossing_tokens)
    fast = labelled.exact & (labelled.lengths <= settings.max_length) \
        & (labelled.trainable >= settings.min_trainable_tokens)

    rest = [(c, p) for c, p in zip(candidates, positions) if p is None or not fast[p]]
    tokens = tokenize_each(runtime, [c for c, _ in rest], [p for _, p in rest], encoded,
                           settings.crossing_tokens)
    outcomes = [(c, fit_example(c, t, settings, runtime)) for (c, _), t in zip(rest, tokens)]
    fitted = [(c, o) for c, o in outcomes if isinstance(o, Fitted)]
    dropped = [Rejection(c.raw.source, c.raw.line, o.reason, o.detail, c.raw.text)
               for c, o in outcomes if isinstance(o, Dropped)]
    stats = stats_lib.merge([started.rendered.stats])
    for rejection in dropped:
        stats_lib.bump(stats, "dropped", rejection.source, rejection.reason)
    rows = ExampleRows.concat([labelled_rows(plain, labelled, fast, settings),
                               fitted_rows(fitted, settings)])
    return PreparedBatch(rows, list(started.rendered.rejected), dropped, stats)


def render_records(records: Sequence[RawRecord], settings: PrepareSettings) -> RenderedBatch:
    """Parse, normalize and render each record (`examples_of`), counting what happened."""
    stats: stats_lib.Stats = {}
    rejected: List[Rejection] = []
    candidates: List[Candidate] = []
    own: Dict[str, PrepareSettings] = {}
    for raw in records:
        stats_lib.bump(stats, "read", raw.source)
        if raw.source not in own:
            own[raw.source] = settings.for_source(raw.source)
        source = own[raw.source]
        outcome = examples_of(raw, source)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
            stats_lib.bump(stats, "rejected", raw.source, outcome.reason)
            continue
        if outcome[-1][1].rewritten:
            stats_lib.bump(stats, "rewritten_turns", settings.template.rewritten_turns)
        if len(outcome) > 1:  # --rewritten-turns split: the examples beyond the record's first
            stats_lib.bump(stats, "split_examples", raw.source, by=len(outcome) - 1)
        candidates += [Candidate(raw, conv, rendered, conv.example_id(), source,
                                 tuple(rendered.trained_spans(source.train_on)))
                       for conv, rendered in outcome]
    return RenderedBatch(tuple(candidates), tuple(rejected), stats)


def tokenize_each(runtime: TokenizerRuntime, candidates: Sequence[Candidate],
                  positions: Sequence[Optional[int]], encoded: Encoded,
                  crossing: str = "train") -> List[Tokens]:
    """Tokens and labels of each candidate the per-example way: from its whole-text encoding
    in the batch (one tokenizer call for all of them when the fast engine made the batch), or
    piece by piece where its position is None."""
    at = [p for p in positions if p is not None]
    encodings = iter(encoded.encodings_at(at, runtime))
    return [tokens_of(runtime, c.rendered, c.spans, None if p is None else next(encodings),
                      crossing) for c, p in zip(candidates, positions)]


def fit_example(candidate: Candidate, tokens: Tokens, settings: PrepareSettings,
                runtime: TokenizerRuntime) -> Union[Fitted, Dropped]:
    """Fit into --max-length with --truncation, then hold it to --min-trainable-tokens."""
    own = candidate.settings

    def retokenize(conv: Conversation) -> Optional[Tuple[Rendered, Tokens]]:
        try:
            rendered = render(conv, own.template)
        except TemplateError:
            return None
        [tokens] = tokenize_batch(runtime, [rendered], [rendered.trained_spans(own.train_on)],
                                  settings.crossing_tokens)
        return rendered, tokens

    result = fit(tokens, candidate.rendered, settings.truncation, settings.max_length,
                 candidate.conv, retokenize)
    if isinstance(result, Fitted):
        trainable = trainable_count(result.tokens)
        if trainable < settings.min_trainable_tokens:
            return Dropped("no_trainable_tokens", f"{trainable} trained tokens < "
                           f"--min-trainable-tokens {settings.min_trainable_tokens}")
    return result


def labelled_rows(plain: Sequence[Candidate], labelled: LabelledBatch, chosen: np.ndarray,
                  settings: PrepareSettings) -> ExampleRows:
    """The rows of the batch-labelled examples `chosen` (a mask) selects, from its arrays."""
    tokens = np.repeat(chosen, labelled.lengths)
    index = np.flatnonzero(chosen)
    return build_rows([plain[i] for i in index.tolist()], labelled.input_ids[tokens],
                      labelled.labels[tokens], labelled.lengths[index],
                      labelled.trainable[index], [()] * len(index), settings)


def fitted_rows(fitted: Sequence[Tuple[Candidate, Fitted]],
                settings: PrepareSettings) -> ExampleRows:
    """The rows of the examples fitted one by one."""
    tokens = [f.tokens for _, f in fitted]
    return build_rows([c for c, _ in fitted], _joined([t.input_ids for t in tokens]),
                      _joined([t.labels for t in tokens]),
                      np.fromiter((len(t.input_ids) for t in tokens), np.int64, len(tokens)),
                      np.fromiter(map(trainable_count, tokens), np.int64, len(tokens)),
                      [f.reasons for _, f in fitted], settings)


def build_rows(candidates: Sequence[Candidate], input_ids: np.ndarray, labels: np.ndarray,
               lengths: np.ndarray, trainable: np.ndarray,
               truncation: Sequence[Tuple[Truncation, ...]],
               settings: PrepareSettings) -> ExampleRows:
    """The rows of these examples (their tokens end to end, `lengths` each), with the split
    and shard each example's id assigns it."""
    offsets = np.zeros(len(candidates) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    places = [assign(c.example_id, settings.seed, c.settings.validation_fraction,
                     settings.num_shards, settings.validation_shards) for c in candidates]
    return ExampleRows(
        [c.example_id for c in candidates], [c.raw.source for c in candidates],
        np.fromiter((c.raw.line for c in candidates), np.int64, len(candidates)),
        input_ids.astype(np.int32, copy=False), labels.astype(np.int32, copy=False), offsets,
        np.asarray(trainable, dtype=np.int32), list(truncation), [split for split, _ in places],
        np.fromiter((shard for _, shard in places), np.int64, len(places)))


def _joined(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int32)


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
