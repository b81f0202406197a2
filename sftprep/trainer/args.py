"""The trainer's command line, parsed once into one frozen TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Optional, Sequence

from sftprep.config import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str
    output: str
    model: str = "tiny"
    max_steps: int = 1000
    epochs: Optional[int] = None
    stop_at: Optional[int] = None
    seq_len: int = 2048
    batch_size: int = 8
    grad_accum: int = 1
    pack: bool = False
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    resume: bool = False
    record_examples: bool = False

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# What decides the numbers a run produces. Resuming with any of these changed would silently
# train a different run, so it is refused; --max-steps is one, since the cosine ends there.
# Everything else (--epochs, --stop-at, how often to log, eval or save, where) may change
# between a run and its resumption.
RUN_DEFINING = ("model", "max_steps", "seq_len", "batch_size", "grad_accum", "pack", "lr",
                "min_lr_ratio", "warmup_steps", "weight_decay", "beta1", "beta2", "clip", "seed",
                "dtype")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sftprep train",
        description="Train a causal LM on sftprep's Parquet output (CPU, CUDA, torchrun).")
    p.add_argument("--data", required=True,
                   help="an `sftprep run --output` directory (local or gs://); a published "
                        "LATEST pointer in it is followed")
    p.add_argument("--output", required=True, help="checkpoint directory (local or gs://)")
    p.add_argument("--model", default="tiny",
                   help="local Hugging Face model directory, or `tiny` for a small random Llama "
                        "sized to the dataset's tokenizer (default: tiny)")
    p.add_argument("--max-steps", type=int, default=1000,
                   help="optimizer steps; the cosine schedule ends here, so a resume must keep "
                        "it (default 1000)")
    p.add_argument("--epochs", type=int, default=None,
                   help="also stop when every rank has used its share of the train split this "
                        "many times (default: no limit, cycle until --max-steps)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="exit after this step with a checkpoint, schedule unchanged (for "
                        "time-limited jobs; continue with --resume)")
    p.add_argument("--seq-len", type=int, default=2048,
                   help="tokens per row; longer examples are cut at the end (default 2048)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--pack", action="store_true",
                   help="pack several examples per --seq-len row (no attention or loss across "
                        "examples) instead of padding each example")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="final learning rate as a share of --lr (default 0.1)")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warmup steps (default 50)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--clip", type=float, default=1.0,
                   help="gradient norm clipping; 0 turns it off (default 1.0)")
    p.add_argument("--eval-every", type=int, default=200,
                   help="validation loss every N steps and at the end; 0 = only at the end")
    p.add_argument("--eval-batches", type=int, default=0,
                   help="validation micro-batches per process per evaluation; 0 = the whole split")
    p.add_argument("--save-every", type=int, default=500,
                   help="checkpoint every N steps and at the end; 0 = only at the end")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept")
    p.add_argument("--log-every", type=int, default=10, help="log a line every N steps")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="autocast dtype; auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --output (starts fresh when "
                        "there is none)")
    p.add_argument("--record-examples", action="store_true",
                   help="write the example_ids each process trained on, per step, to "
                        "OUTPUT/examples/")
    p.add_argument("--verbose", action="store_true",
                   help="print the traceback of an error before its one-line message")
    return p


def parse_args(argv: Sequence[str]) -> TrainConfig:
    args = build_parser().parse_args(list(argv))
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    positive = {"--max-steps": config.max_steps, "--seq-len": config.seq_len,
                "--batch-size": config.batch_size, "--grad-accum": config.grad_accum,
                "--log-every": config.log_every, "--keep-checkpoints": config.keep_checkpoints}
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    for flag, value in {"--eval-every": config.eval_every, "--eval-batches": config.eval_batches,
                        "--save-every": config.save_every, "--warmup-steps": config.warmup_steps,
                        "--clip": config.clip, "--weight-decay": config.weight_decay}.items():
        if value < 0:
            raise ConfigError(f"{flag} must not be negative, got {value}")
    if config.seq_len < 2:
        raise ConfigError("--seq-len must be at least 2 (the loss predicts the next token)")
    if config.lr <= 0 or not 0 <= config.min_lr_ratio <= 1:
        raise ConfigError("--lr must be positive and --min-lr-ratio within [0, 1]")
    if config.epochs is not None and config.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {config.epochs}")
    if config.stop_at is not None and not 1 <= config.stop_at:
        raise ConfigError(f"--stop-at must be at least 1, got {config.stop_at}")
