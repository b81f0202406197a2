"""Shared fixtures: the default tokenizer, extended once per session with every built-in
template's control tokens, and the runtime the workers would build from it."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = pathlib.Path(__file__).parent / "data"


class TokenInfo:
    """The saved tokenizer's info plus the BOS/EOS texts templates use."""

    def __init__(self, info, bos, eos):
        self.info, self.bos, self.eos = info, bos, eos


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from sftprep.tokenizer.load import DEFAULT_TOKENIZER, load_tokenizer_source
    from sftprep.transforms import templates

    source = load_tokenizer_source(DEFAULT_TOKENIZER)
    tokens = [t for name in templates.BUILTIN_TEMPLATES
              for t in templates.TemplateSpec(name).special_tokens()]
    files, info = source.with_tokens(tokens)
    directory = tmp_path_factory.mktemp("tokenizer")
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory, TokenInfo(info, source.bos, source.eos)


@pytest.fixture(scope="session")
def runtime(tokenizer_dir):
    from sftprep.tokenizer.runtime import TokenizerRuntime

    directory, info = tokenizer_dir
    return TokenizerRuntime.from_file(str(directory / "tokenizer.json"), info.bos)


@pytest.fixture(scope="session")
def token_info(tokenizer_dir):
    return tokenizer_dir[1]


def spec_for(name, info):
    from sftprep.transforms.templates import TemplateSpec

    return TemplateSpec(name, bos=info.bos, eos=info.eos)


def read_records(name, limit=None):
    from sftprep.transforms.records import RawRecord

    path = DATA / name
    out = []
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle, start=1):
            if limit is not None and index > limit:
                break
            out.append(RawRecord(str(path), index, line.rstrip("\n")))
    return out


@pytest.fixture(scope="session")
def gcs():
    """A gcp-storage-emulator on 127.0.0.1 with STORAGE_EMULATOR_HOST set (see gcs_emulator.py)."""
    from tests.gcs_emulator import running_emulator

    with running_emulator() as emulator:
        yield emulator
