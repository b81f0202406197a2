"""The trainer's command line, parsed once into one frozen TrainConfig whose fields declare
the options (sftprep/options.py)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Optional, Sequence

from sftprep.errors import ConfigError
from sftprep.options import (
    Parser, add_arguments, at_least, check_values, did_you_mean, flags_of, given, option,
    options_of)

_NOT_NEGATIVE = {"check": lambda value: value >= 0, "message": "must not be negative, got {value}"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str = option(help="an `sftprep run --output` directory (local or gs://); a published "
                            "LATEST pointer in it is followed", metavar="DIR")
    output: str = option(help="checkpoint directory (local or gs://)", metavar="CKPT_DIR")
    model: str = option("tiny", "local Hugging Face model directory, or `tiny` for a small "
                                "random Llama sized to the dataset's tokenizer")
    max_steps: int = option(1000, "optimizer steps; the cosine schedule ends here, so a resume "
                                  "must keep it", **at_least(1, ", got {value}"))
    epochs: Optional[int] = option(None, "also stop when every rank has used its share of the "
                                         "train split this many times", type=int,
                                   default_text="no limit, cycle until --max-steps",
                                   **at_least(1, ", got {value}"))
    stop_at: Optional[int] = option(None, "exit after this step with a checkpoint, schedule "
                                          "unchanged (for time-limited jobs; continue with "
                                          "--resume)", type=int, **at_least(1, ", got {value}"))
    seq_len: int = option(2048, "tokens per row; longer examples are cut at the end",
                          **at_least(2, " (the loss predicts the next token)"))
    batch_size: int = option(8, "rows per micro-batch per process", **at_least(1, ", got {value}"))
    grad_accum: int = option(1, "micro-batches per optimizer step", **at_least(1, ", got {value}"))
    pack: bool = option(False, "pack several examples per --seq-len row (no attention or loss "
                               "across examples) instead of padding each example")
    lr: float = option(3e-4, "peak learning rate", check=lambda lr: lr > 0,
                       message="must be positive, got {value}")
    min_lr_ratio: float = option(0.1, "final learning rate as a share of --lr",
                                 check=lambda r: 0 <= r <= 1, message="must be within [0, 1], "
                                                                      "got {value}")
    warmup_steps: int = option(50, "linear warmup steps", **_NOT_NEGATIVE)
    weight_decay: float = option(0.1, "AdamW weight decay", **_NOT_NEGATIVE)
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    clip: float = option(1.0, "gradient norm clipping; 0 turns it off", **_NOT_NEGATIVE)
    eval_every: int = option(200, "validation loss every N steps and at the end; 0 = only at "
                                  "the end", **_NOT_NEGATIVE)
    eval_batches: int = option(0, "validation micro-batches per process per evaluation; 0 = "
                                  "the whole split", **_NOT_NEGATIVE)
    save_every: int = option(500, "checkpoint every N steps and at the end; 0 = only at the end",
                             **_NOT_NEGATIVE)
    keep_checkpoints: int = option(2, "newest checkpoints kept", **at_least(1, ", got {value}"))
    log_every: int = option(10, "log a line every N steps", **at_least(1, ", got {value}"))
    seed: int = option(0, "initial weights and data order")
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda"))
    dtype: str = option("auto", "autocast dtype; auto = bfloat16 on CUDA, float32 on CPU",
                        choices=("auto", "float32", "bfloat16"))
    resume: bool = option(False, "continue from the newest checkpoint in --output (starts fresh "
                                 "when there is none)")
    record_examples: bool = option(False, "write the example_ids each process trained on, per "
                                          "step, to OUTPUT/examples/")

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


TRAIN_OPTIONS = options_of(TrainConfig)


# What decides the numbers a run produces. Resuming with any of these changed would silently
# train a different run, so it is refused; --max-steps is one, since the cosine ends there.
# Everything else (--epochs, --stop-at, how often to log, eval or save, where) may change
# between a run and its resumption.
RUN_DEFINING = ("model", "max_steps", "seq_len", "batch_size", "grad_accum", "pack", "lr",
                "min_lr_ratio", "warmup_steps", "weight_decay", "beta1", "beta2", "clip", "seed",
                "dtype")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sftprep train",
        description="Train a causal LM on sftprep's Parquet output (CPU, CUDA, torchrun).")
    add_arguments(parser, TRAIN_OPTIONS)
    parser.add_argument("--verbose", action="store_true",
                        help="print the traceback of an error before its one-line message")
    return parser


def parse_args(argv: Sequence[str]) -> TrainConfig:
    """The validated TrainConfig of a command line; an unknown option is an error."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}" + did_you_mean(unknown[0], flags_of(parser))
                          + " (sftprep train --help lists the options)")
    values = given(args, TRAIN_OPTIONS)
    for required in ("data", "output"):
        if required not in values:
            raise ConfigError(f"--{required} is required")
    config = TrainConfig(**values)
    check_values(TRAIN_OPTIONS, config.as_dict())
    return config
