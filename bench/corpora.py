"""Benchmark inputs, built deterministically from the bundled data by repetition.

Every repeated record is made distinct by appending " (#i)" to its first user text: sftprep
deduplicates by content, so an extra id field alone would make repeats duplicates.

- pc: prompt/completion records from gsm8k (question/answer) and alpaca (instruction+input/output).
- chat: multi-turn `messages` records: the glaive tool-call dialogues (with tools, tool calls and
  tool results) and gsm8k as system/user/assistant.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, Iterator, List

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
MATH_SYSTEM = "You are a careful math tutor. Show your reasoning, then give the answer."


def _jsonl(name: str) -> List[dict]:
    with open(DATA / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _pc_base() -> List[Dict[str, str]]:
    records = [{"prompt": r["question"].strip(), "completion": r["answer"].strip()}
               for r in _jsonl("gsm8k_train.jsonl")]
    for r in _jsonl("alpaca_en_demo.jsonl"):
        prompt = f"{r['instruction']}\n\n{r['input']}" if r["input"].strip() else r["instruction"]
        records.append({"prompt": prompt.strip(), "completion": r["output"].strip()})
    return records


def _glaive_messages(record: dict) -> dict:
    """OpenAI form, as users store it: tools and call arguments as JSON strings."""
    messages = []
    for turn in record["conversations"]:
        role = {"human": "user", "gpt": "assistant", "observation": "tool"}.get(turn["from"])
        if turn["from"] == "function_call":
            call = json.loads(turn["value"])
            function = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"type": "function", "function": function}]})
        else:
            messages.append({"role": role, "content": turn["value"].strip()})
    return {"messages": messages, "tools": json.dumps(json.loads(record["tools"] or "[]"))}


def _chat_base() -> List[dict]:
    records = [_glaive_messages(r) for r in _jsonl("glaive_toolcall_en_demo.jsonl")]
    for r in _jsonl("gsm8k_train.jsonl"):
        records.append({"messages": [{"role": "system", "content": MATH_SYSTEM},
                                     {"role": "user", "content": r["question"].strip()},
                                     {"role": "assistant", "content": r["answer"].strip()}]})
    return records


def records(kind: str, count: int) -> Iterator[dict]:
    base = _pc_base() if kind == "pc" else _chat_base()
    for index in range(count):
        record = json.loads(json.dumps(base[index % len(base)]))
        if kind == "pc":
            record["prompt"] = f"{record['prompt']} (#{index})"
        else:
            first_user = next(m for m in record["messages"] if m["role"] == "user")
            first_user["content"] = f"{first_user['content']} (#{index})"
        yield record


def build(kind: str, count: int, directory: pathlib.Path) -> pathlib.Path:
    """Write (once) and return the corpus file `{kind}_{count}.jsonl`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}_{count}.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            for record in records(kind, count):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        partial.rename(path)
    return path
