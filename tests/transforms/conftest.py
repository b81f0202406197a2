"""Fixtures of the stock-template tests (test_stock_templates, test_model_vocabularies)."""

from __future__ import annotations

import datetime

import pytest

from tests.conftest import read_records

STOCK_FILES = ("v1_sft_demo.jsonl", "glaive_toolcall_en_demo.jsonl", "alpaca_en_demo.jsonl")
STOCK_LIMIT = 40  # records per file and template


@pytest.fixture(scope="module")
def records():
    """The first records of the bundled messages, ShareGPT tool-call and alpaca files."""
    return {name: read_records(name, limit=STOCK_LIMIT) for name in STOCK_FILES}


@pytest.fixture
def fixed_date(monkeypatch):
    """transformers' strftime_now on sftprep's default --template-date."""
    from transformers.utils import chat_template_utils

    class FixedDate(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1)

    monkeypatch.setattr(chat_template_utils, "datetime", FixedDate)
