"""Show examples exactly as the pipeline prepares them: tokens, what is trained, control tokens.

The examples come from `prepare_batch`, the function the pipeline's workers call, so what is
shown is what would be written. This module only selects records and formats the result: as
ANSI-colored text, as plain text (no color), or as a standalone HTML page.

Plain-text conventions (also the legend of the output):

    │        token boundary
    ⟦ ... ⟧  trained tokens (labels == input_ids)
    ⟨ ... ⟩  a control token (a special token of the tokenizer, e.g. <|im_start|>, EOS)
    ↵        a newline inside a token (followed by a real line break)
    ⇥        a tab
"""

from __future__ import annotations

import dataclasses
import html
import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from sftprep.transforms.prepare import PrepareSettings, conversation_of, prepare_batch
from sftprep.transforms.records import RawRecord, Rejection
from sftprep.transforms.rows import Example
from sftprep.tokenizer.runtime import TokenizerRuntime
from sftprep.tokenizer.labels import IGNORE_INDEX

BOUNDARY, TRAINED_OPEN, TRAINED_CLOSE = "│", "⟦", "⟧"
SPECIAL_OPEN, SPECIAL_CLOSE = "⟨", "⟩"
NEWLINE_MARK, TAB_MARK, EMPTY_MARK = "↵", "⇥", "∅"
RAW_PREVIEW_CHARS = 300

NumberedRecord = Tuple[int, RawRecord]  # (0-based index among the records read, record)


@dataclasses.dataclass(frozen=True)
class Piece:
    """What one token shows: its text, and whether it is trained and a control token.

    A character split over several byte-level tokens is shown once, as one piece holding all
    their ids, so every piece is valid text.
    """

    text: str
    ids: Tuple[int, ...]
    trained: bool
    special: bool


@dataclasses.dataclass(frozen=True)
class Shown:
    """One selected record and what the pipeline made of it."""

    index: int
    source: str
    line: int
    outcome: str  # "example", or the stage that refused it: "rejected" | "dropped"
    example: Optional[Example] = None
    pieces: Tuple[Piece, ...] = ()
    reason: str = ""
    detail: str = ""
    raw: str = ""

    @property
    def num_tokens(self) -> int:
        return len(self.example.input_ids) if self.example is not None else 0

    @property
    def num_trained(self) -> int:
        return self.example.num_trainable_tokens if self.example is not None else 0

    def counts_line(self) -> str:
        """The one-line summary: where it came from, its id, its counts, or why it is not used.

        >>> Shown(4, "a.jsonl", 5, "rejected", reason="invalid_json", detail="line 1").counts_line()
        '#4 a.jsonl:5  rejected=invalid_json  (line 1)'
        """
        where = f"#{self.index} {self.source}:{self.line}"
        if self.example is None:
            return f"{where}  {self.outcome}={self.reason}  ({self.detail})"
        example = self.example
        truncated = ",".join(example.truncation) or "no"
        share = f" ({self.num_trained / self.num_tokens:.0%})" if self.num_tokens else ""
        return (f"{where}  example_id={example.example_id}  tokens={self.num_tokens}  "
                f"trained={self.num_trained}{share}  truncated={truncated}  split={example.split}")


def token_pieces(input_ids: Sequence[int], labels: Sequence[int],
                 runtime: TokenizerRuntime) -> List[Piece]:
    """Decode tokens one by one into pieces, with the decoder's context so spaces and multi-byte
    characters come out right (the way streaming text generation decodes).

    Joining the texts of all pieces gives `runtime.decode(input_ids)`; joining those of the
    trained pieces gives the decoded trained tokens.
    """
    ids = [int(i) for i in input_ids]
    trained = [int(label) != IGNORE_INDEX for label in labels]
    special_ids = _special_ids(runtime)
    pieces: List[Piece] = []
    prefix = start = 0  # decode ids[prefix:...]: one piece of context before the piece at start
    for end in range(1, len(ids) + 1):
        context = runtime.decode(ids[prefix:start])
        text = runtime.decode(ids[prefix:end])
        incomplete = text.endswith("\ufffd") and end < len(ids) and trained[end] == trained[start]
        if incomplete and ids[end - 1] not in special_ids and ids[end] not in special_ids:
            continue  # part of a character: shown with the next token
        piece_ids = tuple(ids[start:end])
        pieces.append(Piece(text[len(context):] if text.startswith(context) else
                            runtime.decode(piece_ids), piece_ids, trained[start],
                            len(piece_ids) == 1 and piece_ids[0] in special_ids))
        prefix, start = start, end
    return pieces


def _special_ids(runtime: TokenizerRuntime) -> frozenset:
    cached = getattr(runtime, "_views_special_ids", None)
    if cached is None:
        cached = frozenset(i for i, token in runtime.tokenizer.get_added_tokens_decoder().items()
                           if token.special)
        runtime._views_special_ids = cached  # type: ignore[attr-defined]
    return cached


def inspect_records(numbered: Sequence[NumberedRecord], settings: PrepareSettings,
                    runtime: TokenizerRuntime) -> List[Shown]:
    """Run the pipeline's example path on the records; one `Shown` per record (per example under
    --rewritten-turns split), in input order."""
    prepared = prepare_batch([record for _, record in numbered], settings, runtime)
    examples: Dict[Tuple[str, int], List[Example]] = {}  # several: --rewritten-turns split
    for e in prepared.examples:
        examples.setdefault((e.source, e.source_line), []).append(e)
    refused: Dict[Tuple[str, int], Tuple[str, Rejection]] = {}
    for outcome, rejections in (("rejected", prepared.rejected), ("dropped", prepared.dropped)):
        for rejection in rejections:
            refused[(rejection.source, rejection.line)] = (outcome, rejection)
    out: List[Shown] = []
    for index, record in numbered:
        key = (record.source, record.line)
        if key in examples:
            for example in examples[key]:
                out.append(Shown(index, record.source, record.line, "example", example,
                                 tuple(token_pieces(example.input_ids, example.labels, runtime))))
        else:
            outcome, rejection = refused[key]
            out.append(Shown(index, record.source, record.line, outcome, reason=rejection.reason,
                             detail=rejection.detail, raw=rejection.raw or ""))
    return out


def select_records(records: Iterable[RawRecord], settings: PrepareSettings, *, n: int = 5,
                   indices: Sequence[int] = (), ids: Sequence[str] = (),
                   sample: bool = False, seed: int = 0) -> List[NumberedRecord]:
    """Pick records to show: by 0-based index and/or example id (or a unique prefix of one),
    else `n` at random (reproducible with `seed`), else the first `n`. Reading stops as soon as
    the selection is complete. ValueError names what was asked for and not found.
    """
    numbered = enumerate(records)
    if sample:
        return _reservoir(numbered, n, seed)
    if not indices and not ids:
        return [item for item, _ in zip(numbered, range(n))]
    wanted_indices, wanted_ids = set(indices), {i.lower() for i in ids}
    found_ids: Dict[str, int] = {}
    picked: List[NumberedRecord] = []
    read = 0
    for index, record in numbered:
        read = index + 1
        take = index in wanted_indices
        remaining = wanted_ids - set(found_ids)
        example_id = _example_id(record, settings) if remaining else None
        for wanted in remaining:
            if example_id is not None and example_id.startswith(wanted):
                found_ids[wanted] = index
                take = True
        if take:
            picked.append((index, record))
        if index >= max(wanted_indices, default=-1) and not wanted_ids - set(found_ids):
            break
    missing = [f"--index {i}" for i in sorted(wanted_indices - {index for index, _ in picked})]
    missing += [f"--id {i}" for i in sorted(wanted_ids - set(found_ids))]
    if missing:
        raise ValueError(f"not found in the input ({read} records): {', '.join(missing)}. "
                         "Indices count records from 0; an id is an example_id or a prefix of one")
    return picked


def _example_id(record: RawRecord, settings: PrepareSettings) -> Optional[str]:
    outcome = conversation_of(record, settings)
    return None if isinstance(outcome, Rejection) else outcome[0].example_id()


def _reservoir(numbered: Iterable[NumberedRecord], n: int, seed: int) -> List[NumberedRecord]:
    """A uniform sample of n records in one pass (algorithm R), back in input order."""
    rng = random.Random(seed)
    kept: List[NumberedRecord] = []
    for index, record in numbered:
        if len(kept) < n:
            kept.append((index, record))
        else:
            slot = rng.randrange(index + 1)
            if slot < n:
                kept[slot] = (index, record)
    return sorted(kept, key=lambda item: item[0])


# --- terminal ------------------------------------------------------------------------------

_RESET = "\x1b[0m"
# (foreground, background) as 256-color codes, alternating per token to show boundaries;
# both are set so the text reads the same on light and dark terminals.
_UNTRAINED = ((252, 236), (252, 239))
_TRAINED = ((231, 28), (231, 34))
_SPECIAL_FG = {False: 213, True: 225}
_MARK_FG = {False: 244, True: 157}


def format_terminal(shown: Sequence[Shown], color: bool, legend: bool = True) -> str:
    """Every selected record as terminal text: a counts line, then its tokens."""
    parts: List[str] = []
    if legend:
        parts.append(_legend_terminal(color))
    for item in shown:
        header = item.counts_line()
        parts.append(f"\x1b[1m{header}{_RESET}" if color else header)
        if item.example is None:
            preview = _preview(item.raw)
            parts.append(f"  raw: {preview}" if preview else "  raw: (none)")
        else:
            parts.append(_pieces_color(item.pieces) if color else pieces_plain(item.pieces))
        parts.append("")
    return "\n".join(parts)


def _legend_terminal(color: bool) -> str:
    if not color:
        return (f"legend: {BOUNDARY} token boundary  {TRAINED_OPEN}…{TRAINED_CLOSE} trained  "
                f"{SPECIAL_OPEN}…{SPECIAL_CLOSE} control token  {NEWLINE_MARK} newline  "
                f"{TAB_MARK} tab\n")
    samples = [_style(_UNTRAINED[0], "untrained"), _style(_UNTRAINED[1], "tokens"), " ",
               _style(_TRAINED[0], "trained"), _style(_TRAINED[1], "tokens"), " ",
               _style((_SPECIAL_FG[False], _UNTRAINED[0][1]), "<control>", bold=True), " ",
               f"{NEWLINE_MARK} newline"]
    return "legend: " + "".join(samples) + "\n"


def _style(colors: Tuple[int, int], text: str, bold: bool = False) -> str:
    weight = "1;" if bold else ""
    return f"\x1b[{weight}38;5;{colors[0]};48;5;{colors[1]}m{text}{_RESET}"


def _pieces_color(pieces: Sequence[Piece]) -> str:
    out: List[str] = []
    for position, piece in enumerate(pieces):
        fg, bg = (_TRAINED if piece.trained else _UNTRAINED)[position % 2]
        if piece.special:
            fg = _SPECIAL_FG[piece.trained]
        style = f"\x1b[{'1;' if piece.special else ''}38;5;{fg};48;5;{bg}m"
        lines = _visible(piece.text).split("\n")
        for number, text in enumerate(lines):
            if number:
                out.append("\n")  # outside the style, so the background does not fill the line
            if text.endswith(NEWLINE_MARK) and number < len(lines) - 1:
                mark = f"\x1b[38;5;{_MARK_FG[piece.trained]};48;5;{bg}m{NEWLINE_MARK}"
                out.append(f"{style}{text[:-1]}{mark}{_RESET}" if text[:-1] else f"{mark}{_RESET}")
            elif text:
                out.append(f"{style}{text}{_RESET}")
    return "".join(out)


def pieces_plain(pieces: Sequence[Piece]) -> str:
    """Tokens as plain text with the module's conventions.

    >>> pieces_plain([Piece("Hi", (1,), False, False), Piece(" there", (2,), True, False),
    ...               Piece("</s>", (3,), True, True)])
    'Hi⟦ there│⟨</s>⟩⟧'
    """
    out: List[str] = []
    previous: Optional[Piece] = None
    for piece in pieces:
        if previous is not None and previous.trained != piece.trained:
            out.append(TRAINED_CLOSE if previous.trained else "")
        if piece.trained and (previous is None or not previous.trained):
            out.append(TRAINED_OPEN)
        elif previous is not None and previous.trained == piece.trained \
                and not previous.text.endswith("\n"):
            out.append(BOUNDARY)
        text = _visible(piece.text)
        out.append(f"{SPECIAL_OPEN}{text}{SPECIAL_CLOSE}" if piece.special else text)
        previous = piece
    if previous is not None and previous.trained:
        out.append(TRAINED_CLOSE)
    return "".join(out)


def _visible(text: str) -> str:
    if not text:
        return EMPTY_MARK
    return text.replace("\n", NEWLINE_MARK + "\n").replace("\t", TAB_MARK + "\t")


def _preview(raw: str, limit: int = RAW_PREVIEW_CHARS) -> str:
    flat = raw.replace("\n", "\\n")
    return flat if len(flat) <= limit else flat[:limit] + f"… ({len(raw)} chars)"


# --- HTML ----------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2933; background: #f7f8fa; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
.meta { color: #52606d; margin: 0 0 16px; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; align-items: center; margin: 0 0 20px;
          font-size: 13px; color: #52606d; }
.card { background: #fff; border: 1px solid #e4e7eb; border-radius: 8px; margin: 0 0 18px;
        box-shadow: 0 1px 2px rgba(15, 23, 42, .04); }
.card.refused { border-left: 4px solid #d64545; }
.head { padding: 10px 14px; border-bottom: 1px solid #e4e7eb; display: flex; gap: 8px 16px;
        flex-wrap: wrap; align-items: baseline; font-size: 13px; }
.head .where { font-weight: 600; color: #1f2933; }
.head .id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #52606d; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #eef1f4;
         color: #323f4b; font-size: 12px; }
.badge.warn { background: #fff3c4; color: #8d6708; }
.badge.bad { background: #fde2e2; color: #a61b1b; font-weight: 600; }
.tokens { margin: 0; padding: 12px 14px; white-space: pre-wrap; word-break: break-word;
          font: 13px/1.9 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.tokens span { border-radius: 2px; padding: 1px 0; }
.u0 { background: #eef1f4; } .u1 { background: #dde2e8; }
.t0 { background: #c6efce; } .t1 { background: #9fdfad; }
.sp { color: #7b1fa2; font-weight: 700; outline: 1px solid #b57ad1; outline-offset: -1px; }
.nl { color: #9aa5b1; }
.t0 .nl, .t1 .nl { color: #2f855a; }
.raw { margin: 0; padding: 12px 14px; white-space: pre-wrap; word-break: break-word;
       font: 12px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #52606d; }
"""


def format_html(shown: Sequence[Shown], title: str, settings_line: str = "") -> str:
    """The same view as a standalone page (inline CSS, no scripts, no external resources)."""
    cards = "\n".join(_card_html(item) for item in shown)
    legend = ('<div class="legend"><span class="tokens"><span class="u0">not</span>'
              '<span class="u1"> trained</span></span>'
              '<span class="tokens"><span class="t0">trained</span>'
              '<span class="t1"> tokens</span></span>'
              '<span class="tokens"><span class="u0 sp">&lt;control token&gt;</span></span>'
              f'<span><span class="nl">{NEWLINE_MARK}</span> newline</span>'
              '<span>Shades alternate at each token boundary; hover a token for its id.</span>'
              '</div>')
    meta = f'<p class="meta">{html.escape(settings_line)}</p>' if settings_line else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>{html.escape(title)}</h1>\n{meta}\n{legend}\n{cards}\n</main>\n</body>\n</html>\n")


def _card_html(item: Shown) -> str:
    where = f'<span class="where">#{item.index} {html.escape(item.source)}:{item.line}</span>'
    if item.example is None:
        head = (f'{where}<span class="badge bad">{item.outcome}: {html.escape(item.reason)}</span>'
                f'<span>{html.escape(item.detail)}</span>')
        body = f'<pre class="raw">{html.escape(_preview(item.raw, 2000)) or "(no raw text)"}</pre>'
        return f'<section class="card refused"><div class="head">{head}</div>{body}</section>'
    example = item.example
    share = f" ({item.num_trained / item.num_tokens:.0%})" if item.num_tokens else ""
    truncated = ",".join(example.truncation)
    badges = [f'<span class="badge">tokens {item.num_tokens}</span>',
              f'<span class="badge">trained {item.num_trained}{share}</span>',
              f'<span class="badge warn">truncated: {html.escape(truncated)}</span>' if truncated
              else '<span class="badge">not truncated</span>',
              f'<span class="badge">{html.escape(example.split)}</span>']
    head = (f'{where}<span class="id">example_id {html.escape(example.example_id)}</span>'
            + "".join(badges))
    return (f'<section class="card"><div class="head">{head}</div>'
            f'<pre class="tokens">{_pieces_html(item.pieces)}</pre></section>')


def _pieces_html(pieces: Sequence[Piece]) -> str:
    out: List[str] = []
    for position, piece in enumerate(pieces):
        classes = ("t" if piece.trained else "u") + str(position % 2)
        if piece.special:
            classes += " sp"
        title = "id " + " ".join(str(i) for i in piece.ids)
        text = html.escape(piece.text or EMPTY_MARK).replace(
            "\n", f'<span class="nl">{NEWLINE_MARK}</span>\n').replace("\t", TAB_MARK + "\t")
        out.append(f'<span class="{classes}" title="{title}">{text}</span>')
    return "".join(out)
