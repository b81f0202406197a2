"""The options of the example path (how a raw record becomes an example), declared once.

`RunConfig` nests an `ExampleSettings`; `PrepareSettings` extends it with what the launcher
resolves (the template, the shard counts).
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence, Tuple

from sftprep.errors import ConfigError
from sftprep.options import at_least, option, type_error
from sftprep.transforms.formats import FORMATS
from sftprep.transforms.normalize import REASONING
from sftprep.transforms.records import DEFAULT_MAX_MESSAGES
from sftprep.transforms.templates import TRAIN_ON
from sftprep.tokenizer.labels import CROSSING
from sftprep.transforms.truncate import POLICIES


def parse_field_map(items: Sequence[Any]) -> Tuple[Tuple[str, str], ...]:
    """NEW=OLD strings (or (NEW, OLD) pairs) as (NEW, OLD) pairs.

    >>> parse_field_map(["prompt=question", ("completion", "answer")])
    (('prompt', 'question'), ('completion', 'answer'))
    """
    pairs: List[Tuple[str, str]] = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
            continue
        new, sep, old = str(item).partition("=")
        if not sep or not new or not old:
            raise ConfigError(f"--map expects NEW=OLD, got {item!r}")
        pairs.append((new, old))
    return tuple(pairs)


def field_map_value(key: str, value: Any) -> List[Tuple[str, str]]:
    """`map` of a --config file as pairs: a NEW: OLD mapping, NEW=OLD, or a list of NEW=OLD or
    NEW: OLD."""
    if isinstance(value, dict):
        items: List[Any] = [{new: old} for new, old in value.items()]
    elif isinstance(value, (list, str)):
        items = value if isinstance(value, list) else [value]
    else:
        raise type_error(key, "a mapping of NEW: OLD or a list of NEW=OLD strings", value)
    pairs: List[Tuple[str, str]] = []
    for item in items:
        pair = next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else item
        if isinstance(pair, str):
            pairs.extend(parse_field_map([pair]))
        elif isinstance(pair, (list, tuple)) and len(pair) == 2 and \
                all(isinstance(name, str) for name in pair):
            pairs.append((pair[0], pair[1]))
        else:
            raise ConfigError(f"--config: {key} entries must be NEW=OLD or NEW: OLD with string "
                              f"names, got {item!r}")
    return pairs


@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    """How records are read, rendered, labelled and fitted, and which split an example takes."""

    format: Optional[str] = option(None, "force one input dialect", choices=FORMATS,
                                   default_text="detect per record")
    field_map: Tuple[Tuple[str, str], ...] = option(
        (), "rename field OLD to NEW before parsing; repeatable", flag="--map",
        metavar="NEW=OLD", from_file=field_map_value, convert=parse_field_map)
    train_on: str = option("all_assistant", "which tokens get labels", choices=TRAIN_ON)
    max_length: int = option(4096, "maximum tokens per example", **at_least(2))
    truncation: str = option("keep_completion", "how to fit long examples", choices=POLICIES)
    min_trainable_tokens: int = option(1, "drop examples with fewer trained tokens",
                                       check=lambda n: n >= 0, message="must be >= 0")
    validation_fraction: float = option(0.0, "share of examples in validation/",
                                        check=lambda f: 0.0 <= f < 1.0,
                                        message="must be in [0, 1)")
    seed: int = option(0, "seed of the train/validation split and the shard hash")
    max_messages: int = option(DEFAULT_MAX_MESSAGES,
                               "reject dialogues of more messages (too_many_messages)",
                               **at_least(1))
    reasoning: str = option("keep", "assistant reasoning (reasoning_content, reasoning parts, a "
                            "leading <think>): keep renders it as <think>...</think> before the "
                            "answer, trained; drop removes it", choices=REASONING)
    crossing_tokens: str = option(
        "train", "a token of the tokenizer that crosses the edge of a trained span (template "
        "text and model text merged into one token): train keeps the tokenizer's tokens (ids "
        "equal apply_chat_template's) and trains it; split cuts the text at the edge so only "
        "the model's text is trained", choices=CROSSING)
