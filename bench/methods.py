"""The baselines sftprep is measured against, each run as its own process by the harness.

    python3 -m bench.methods limit  --input F --tokenizer-dir D --template T
    python3 -m bench.methods engine --input F --tokenizer-dir D --template T
    python3 -m bench.methods peer_a --input F --tokenizer-dir D --output O --max-length N
    python3 -m bench.methods peer_b --input F --tokenizer-dir D --output O --max-length N

Each prints one JSON line: records, tokens, trainable_tokens, and the seconds of its timed part.

- limit: `tokenizers.Tokenizer.encode_batch` over exactly the texts sftprep tokenizes (rendered
  by sftprep's own stages, untimed), in batches of 1024, nothing else.
- engine: sftprep's own BPE engine (`sftprep.tokenizer.engine.FastBPE`, ids only, one thread per
  CPU) over the same texts in the same batches: not a target, but what the limit would be if
  sftprep's ids came from nothing else.
- peer_a: the script a user writes by hand for prompt/completion data: `datasets` JSON loading,
  `map(batched=True, num_proc=2)` tokenizing prompt and completion, masking the prompt,
  truncating, `to_parquet`. It builds the same sequence as sftprep's separator template.
- peer_b: TRL-style chat masking: per example `apply_chat_template(...,
  return_assistant_tokens_mask=True)` with a ChatML template carrying `{% generation %}`
  (written to render exactly what sftprep's chatml template renders), `map(num_proc=2)`,
  `to_parquet`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# sftprep's chatml rendering, as a Jinja chat template with generation blocks.
CHATML_GENERATION = (
    "{{ bos_token }}"
    "{% set ns = namespace(messages=messages, block='') %}"
    "{% if tools %}{% set ns.block = 'You can call the following tools. To call one, answer "
    "with <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call>.\n<tools>\n' %}"
    "{% for t in tools %}{% set ns.block = ns.block + (t | tojson(sort_keys=True)) + "
    "('\n' if not loop.last else '') %}{% endfor %}{% set ns.block = ns.block + '\n</tools>' %}"
    "{% if messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}\n\n{{ ns.block }}<|im_end|>\n"
    "{% set ns.messages = messages[1:] %}"
    "{% else %}<|im_start|>system\n{{ ns.block }}<|im_end|>\n{% endif %}{% endif %}"
    "{% for m in ns.messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{% for c in m.tool_calls or [] %}{% if m.content or not loop.first %}\n{% endif %}"
    "<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "\n</tool_call>{% endfor %}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m.content }}<|im_end|>{% endif %}{{ '\n' }}{% endfor %}"
)


def _rendered_texts(args) -> list:
    """Exactly the texts sftprep tokenizes, rendered by its own stages (untimed)."""
    from sftprep.transforms.prepare import PrepareSettings, conversation_of
    from sftprep.transforms.records import RawRecord, Rejection
    from sftprep.transforms.templates import TemplateSpec
    from sftprep.tokenizer.load import load_tokenizer_source

    source = load_tokenizer_source(args.tokenizer_dir)
    spec = TemplateSpec(args.template, bos=source.bos, eos=source.eos)
    settings = PrepareSettings(template=spec)
    texts = []
    with open(args.input, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            outcome = conversation_of(RawRecord(args.input, line_no, line), settings)
            if not isinstance(outcome, Rejection):
                texts.append(outcome[1].text)
    return texts


def limit(args) -> dict:
    from tokenizers import Tokenizer

    texts = _rendered_texts(args)
    tokenizer = Tokenizer.from_file(os.path.join(args.tokenizer_dir, "tokenizer.json"))
    tokens = 0
    start = time.perf_counter()
    for index in range(0, len(texts), 1024):
        for encoding in tokenizer.encode_batch(texts[index:index + 1024], add_special_tokens=False):
            tokens += len(encoding.ids)
    return {"records": len(texts), "tokens": tokens, "trainable_tokens": None,
            "seconds": time.perf_counter() - start}


def engine(args) -> dict:
    from sftprep.tokenizer.engine import FastBPE

    texts = _rendered_texts(args)
    with open(os.path.join(args.tokenizer_dir, "tokenizer.json"), encoding="utf-8") as handle:
        fast = FastBPE.for_tokenizer(handle.read())
    if fast is None:
        raise SystemExit("the fast BPE engine does not apply to this tokenizer")
    tokens = 0
    start = time.perf_counter()
    for index in range(0, len(texts), 1024):
        ids, _ = fast.encode(texts[index:index + 1024], threads=os.cpu_count() or 1)
        tokens += len(ids)
    return {"records": len(texts), "tokens": tokens, "trainable_tokens": None,
            "seconds": time.perf_counter() - start}


def _load_json_dataset(path: str, cache_dir: str):
    from datasets import load_dataset

    return load_dataset("json", data_files=path, split="train", cache_dir=cache_dir)


def _summarize(dataset, start: float) -> dict:
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    trainable = sum(sum(1 for x in labels if x != -100) for labels in dataset["labels"])
    return {"records": len(dataset), "tokens": tokens, "trainable_tokens": trainable,
            "seconds": time.perf_counter() - start}


def peer_a(args) -> dict:
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    sep = tokenizer.convert_tokens_to_ids("<|SEP|>")
    max_length = args.max_length

    def tokenize(batch):
        prompts = tokenizer([p.strip() for p in batch["prompt"]], add_special_tokens=False)
        completions = tokenizer([c.strip() for c in batch["completion"]], add_special_tokens=False)
        input_ids, labels = [], []
        for prompt, completion in zip(prompts["input_ids"], completions["input_ids"]):
            head = [bos] + prompt + [sep]
            tail = completion + [eos]
            input_ids.append((head + tail)[:max_length])
            labels.append(([-100] * len(head) + tail)[:max_length])
        return {"input_ids": input_ids, "labels": labels}

    with tempfile.TemporaryDirectory() as cache:
        dataset = _load_json_dataset(args.input, cache)
        out = dataset.map(tokenize, batched=True, num_proc=2, remove_columns=dataset.column_names)
        out.to_parquet(args.output)
        return _summarize(out, start)


def peer_b(args) -> dict:
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    tokenizer.chat_template = CHATML_GENERATION
    max_length = args.max_length

    def tokenize(example):
        messages = []
        for message in example["messages"]:
            item = {"role": message["role"], "content": message["content"] or ""}
            if message.get("tool_calls"):
                item["tool_calls"] = [
                    {"type": "function", "function": {
                        "name": c["function"]["name"],
                        "arguments": json.loads(c["function"]["arguments"])}}
                    for c in message["tool_calls"]]
            messages.append(item)
        tools = json.loads(example["tools"]) if example.get("tools") else None
        out = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        ids = out["input_ids"][:max_length]
        mask = out["assistant_masks"][:max_length]
        return {"input_ids": ids, "labels": [i if m else -100 for i, m in zip(ids, mask)]}

    with tempfile.TemporaryDirectory() as cache:
        dataset = _load_json_dataset(args.input, cache)
        out = dataset.map(tokenize, num_proc=2, remove_columns=dataset.column_names)
        out.to_parquet(args.output)
        return _summarize(out, start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.methods")
    parser.add_argument("method", choices=("limit", "engine", "peer_a", "peer_b"))
    parser.add_argument("--input", required=True)
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--template", default="separator")
    parser.add_argument("--output")
    parser.add_argument("--max-length", type=int, default=4096)
    args = parser.parse_args(argv)
    result = {"limit": limit, "engine": engine, "peer_a": peer_a,
              "peer_b": peer_b}[args.method](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
