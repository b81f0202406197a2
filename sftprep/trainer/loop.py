"""The training loop, top to bottom: where we run, data, model, optimizer, then the steps."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from sftprep import storage
from sftprep.dataset import TRAIN, VALIDATION, OutputDataset
from sftprep.errors import ConfigError
from sftprep.trainer import checkpoint, collate, data, distributed
from sftprep.trainer.args import RUN_DEFINING, TrainConfig
from sftprep.trainer.model import TINY, TokenLoss, build_tiny_model, load_model

SUMMARY = "train_summary.json"


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to min_ratio at max_steps (step counts from 0).

    >>> [round(lr_factor(s, warmup_steps=2, max_steps=6, min_ratio=0.1), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, config: TrainConfig,
                    fused: bool = False) -> Tuple[torch.optim.Optimizer, Any]:
    """AdamW without weight decay on norms and biases, and its warmup-then-cosine schedule."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(config.beta1, config.beta2), fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup_steps=config.warmup_steps, max_steps=config.max_steps,
        min_ratio=config.min_lr_ratio))
    return optimizer, scheduler


def accumulate_gradients(trainable: torch.nn.Module, micro: Sequence[collate.Batch],
                         trained_total: float, ctx: distributed.Context,
                         autocast_dtype: Optional[torch.dtype]) -> float:
    """Backward of every micro-batch of a step into .grad, scaled so the gradient is that of
    the mean loss over the step's `trained_total` tokens; returns the summed loss."""
    loss_sum = 0.0
    for index, batch in enumerate(micro):
        last = index == len(micro) - 1
        sync = (trainable.no_sync() if ctx.distributed and not last
                else contextlib.nullcontext())
        with sync, torch.autocast(ctx.device.type, dtype=autocast_dtype or torch.float32,
                                  enabled=autocast_dtype is not None):
            losses = trainable(**_to_device(batch, ctx.device))
            # DDP averages gradients over ranks; scaling by world size makes the result
            # the mean over every trained token of the step.
            (losses.sum() * ctx.world_size / max(trained_total, 1.0)).backward()
        loss_sum += float(losses.detach().sum())
    return loss_sum


def clip_gradients(model: torch.nn.Module, clip: float) -> float:
    """Scale the gradients to a total norm of at most `clip` (0 = off); the norm before."""
    if clip <= 0:
        return float("nan")
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))


def train(config: TrainConfig) -> Dict[str, Any]:
    # -- where we run ----------------------------------------------------------------------
    ctx = distributed.setup(config.device)
    try:
        return _train(config, ctx)
    finally:
        distributed.teardown(ctx)


def _train(config: TrainConfig, ctx: distributed.Context) -> Dict[str, Any]:
    autocast_dtype = _autocast_dtype(config.dtype, ctx.device)
    log = functools.partial(print, flush=True) if ctx.is_main else lambda text: None

    # -- the dataset, and where a resumed run left it ----------------------------------------
    dataset = data.open_dataset(config.data)
    if dataset.pack_length > config.seq_len:
        raise ConfigError(f"--data {config.data} holds rows packed to {dataset.pack_length} "
                          f"tokens, longer than --seq-len {config.seq_len}; use --seq-len "
                          f"{dataset.pack_length} or more")
    state = _resume_state(config, dataset, ctx)
    shards = dataset.shards(TRAIN)
    blocks = data.list_blocks(shards, ctx.world_size, dataset.vocab_size)
    if not data.has_trained_token(shards):
        raise ConfigError(f"--data {config.data}: no label in the train split is trained (all "
                          "are -100), so there is nothing to learn; check --train-on and the "
                          "template the data was prepared with")
    if len(blocks) < ctx.world_size:
        raise ConfigError(f"--data {config.data}: the train split has {sum(b.rows for b in blocks)}"
                          f" rows, fewer than the {ctx.world_size} processes")
    start = data.Position(**state["data"][ctx.rank]) if state else data.Position()
    stream = data.ExampleStream(blocks, seed=config.seed, rank=ctx.rank,
                                world_size=ctx.world_size, shuffle=True, epochs=config.epochs,
                                vocab_size=dataset.vocab_size, start=start)

    # -- the model: same initial weights on every rank (DDP also broadcasts rank 0's) --------
    if config.model == TINY:
        model = build_tiny_model(dataset.vocab_size, config.seq_len, config.seed)
    else:
        model = load_model(config.model, dataset)
    vocab_rows = model.get_input_embeddings().num_embeddings
    model.to(ctx.device)
    loss_module = TokenLoss(model)
    if state:
        model.load_state_dict(state["model"])
    trainable = (DistributedDataParallel(loss_module, device_ids=[ctx.device.index]
                                         if ctx.device.type == "cuda" else None)
                 if ctx.distributed else loss_module)

    # -- optimizer: no weight decay on norms and biases (the usual AdamW recipe) -------------
    optimizer, scheduler = build_optimizer(model, config, fused=ctx.device.type == "cuda")
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.restore_rng(state["rng"][ctx.rank])
    history = state["history"] if state else _new_history()
    step = state["step"] if state else 0
    first_step = step
    if step:
        log(f"resumed at step {step} from {config.output}")

    # -- the loop ------------------------------------------------------------------------------
    seen: List[str] = []
    progress = _Progress(config.max_steps, ctx.is_main)
    timer = _Throughput()
    stop_reason = "max_steps"
    while step < config.max_steps:
        timer.start()
        # Build the step's micro-batches first: the loss is averaged over every trained token
        # of the step on every rank, so the total must be known before the first backward.
        micro = [collate.next_batch(stream, batch_size=config.batch_size, seq_len=config.seq_len,
                                    pack=config.pack) for _ in range(config.grad_accum)]
        real = [b for b in micro if b is not None]
        for batch in real:
            if batch.max_token_id >= vocab_rows:
                raise ConfigError(f"token id {batch.max_token_id} in {config.data} is outside "
                                  f"the model's {vocab_rows} embeddings; the data was prepared "
                                  "with another tokenizer")
        trained_total, ranks_with_data = distributed.sum_all(
            [sum(b.num_trained for b in real), float(bool(real))], ctx)
        if ranks_with_data == 0:
            stop_reason = "epochs"
            break
        # A rank whose share of the epoch is used up still runs the step (DDP needs every rank
        # in every gradient all-reduce) on a batch with nothing to train: it adds zero.
        micro = [b if b is not None else _empty_batch() for b in micro]
        loss_sum = accumulate_gradients(trainable, micro, trained_total, ctx, autocast_dtype)
        grad_norm = clip_gradients(model, config.clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        loss_total, tokens, slots, truncated = distributed.sum_all(
            [loss_sum, sum(b.num_tokens for b in real), sum(b.slots for b in real),
             sum(b.truncated for b in real)], ctx)
        timer.stop(tokens, trained_total)
        loss = loss_total / max(trained_total, 1.0)
        history["train_loss"].append([step, loss])
        history["tokens"] += int(tokens)
        history["trained_tokens"] += int(trained_total)
        history["slots"] += int(slots)
        history["truncated_examples"] += int(truncated)
        if config.record_examples:
            seen += [f"{step}\t{example_id}" for b in real for example_id in b.example_ids]
        progress.update(step)
        if step % config.log_every == 0 or step == first_step + 1:
            progress.clear()
            rate, trained_rate = timer.per_second()
            log(f"step {step} loss {loss:.4f} lr {lr:.3e} grad_norm {grad_norm:.3f} "
                f"tok/s {rate:.0f} trained_tok/s {trained_rate:.0f} "
                f"pack {tokens / max(slots, 1):.1%}")
        if config.eval_every and step % config.eval_every == 0:
            _evaluate_and_log(loss_module, dataset, config, ctx, step, history, log, progress)
        if config.stop_at is not None and step >= config.stop_at and step < config.max_steps:
            stop_reason = "stop_at"
            break
        if config.save_every and step % config.save_every == 0 and step < config.max_steps:
            _save(config, ctx, dataset, step, model, optimizer, scheduler, stream, history)
    progress.clear()

    # -- the end: final validation, checkpoint, model export, summary ---------------------------
    if stop_reason != "stop_at" and (not history["val_loss"]
                                     or history["val_loss"][-1][0] != step):
        _evaluate_and_log(loss_module, dataset, config, ctx, step, history, log, progress)
    if step > first_step:
        history["train_seconds"] += timer.seconds
        _save(config, ctx, dataset, step, model, optimizer, scheduler, stream, history)
    if config.record_examples:
        storage.write_bytes(storage.join(
            config.output, "examples",
            f"rank-{ctx.rank:05d}-steps-{first_step + 1:08d}-{step:08d}.tsv"),
            "".join(line + "\n" for line in seen).encode())
    summary = _summary(config, ctx, dataset, step, stop_reason, history, vocab_rows,
                       loss_module.trained_positions_only)
    if ctx.is_main:
        if stop_reason != "stop_at":
            _export(model, dataset, config.output)
        storage.replace_bytes(storage.join(config.output, SUMMARY),
                            (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
        log(f"done: step {step} ({stop_reason}); train loss {summary['first_loss']:.4f} -> "
            f"{summary['last_loss']:.4f}; val loss {summary['val_loss']}; "
            f"{summary['tokens_per_second']:.0f} tok/s; summary in "
            f"{storage.join(config.output, SUMMARY)}")
    distributed.barrier(ctx)
    return summary


def _resume_state(config: TrainConfig, dataset: OutputDataset,
                  ctx: distributed.Context) -> Optional[Dict[str, Any]]:
    """The newest checkpoint's state when resuming; refuses anything that would not be the
    same run (another dataset, world size or training-defining option)."""
    pointer = checkpoint.latest(config.output)
    if not config.resume:
        if pointer:
            raise ConfigError(f"--output {config.output} holds a checkpoint (step "
                              f"{pointer['step']}); pass --resume to continue it or choose "
                              "another --output")
        return None
    if not pointer:
        return None  # --resume on a fresh directory starts from scratch (restartable jobs)
    state = checkpoint.load(config.output, pointer)
    saved = state["config"]
    changed = [k for k in RUN_DEFINING if saved.get(k) != getattr(config, k)]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in changed)
        raise ConfigError(f"--resume: the checkpoint was trained with {was}; resume with the "
                          "same options or start a new --output")
    if state["dataset_fingerprint"] != dataset.fingerprint:
        raise ConfigError(f"--resume: the dataset changed since the checkpoint (fingerprint "
                          f"{state['dataset_fingerprint'][:12]} -> {dataset.fingerprint[:12]}); "
                          f"point --data at {state['data_root']}")
    if len(state["data"]) != ctx.world_size:
        raise ConfigError(f"--resume: the checkpoint was written by {len(state['data'])} "
                          f"processes, this run has {ctx.world_size}; the data order depends on it")
    return state


def _save(config: TrainConfig, ctx: distributed.Context, dataset: OutputDataset, step: int,
          model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          stream: data.ExampleStream, history: Dict[str, Any]) -> None:
    # Every rank's data position and RNG state go into rank 0's file.
    positions = distributed.gather(dataclasses.asdict(stream.position), ctx)
    rngs = distributed.gather(checkpoint.rng_state(), ctx)
    if ctx.is_main:
        state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "config": config.as_dict(),
                 "data": positions, "rng": rngs, "history": history,
                 "dataset_fingerprint": dataset.fingerprint, "data_root": dataset.root}
        name = checkpoint.save(config.output, step, state, config.keep_checkpoints)
        print(f"saved {storage.join(config.output, name)}", flush=True)
    distributed.barrier(ctx)


@torch.no_grad()
def evaluate(loss_module: TokenLoss, dataset: OutputDataset, config: TrainConfig,
             ctx: distributed.Context) -> Optional[float]:
    """Mean loss per trained token over the validation split (each rank its own blocks)."""
    shards = dataset.shards(VALIDATION)
    if not shards:
        return None
    blocks = data.list_blocks(shards, ctx.world_size, dataset.vocab_size)
    stream = data.ExampleStream(blocks, seed=config.seed, rank=ctx.rank,
                                world_size=ctx.world_size, shuffle=False, epochs=1,
                                vocab_size=dataset.vocab_size)
    autocast_dtype = _autocast_dtype(config.dtype, ctx.device)
    was_training = loss_module.training
    loss_module.eval()
    loss_sum, count, batches = 0.0, 0, 0
    # The unwrapped module: DDP's forward would start collectives ranks do not all reach.
    while (not config.eval_batches or batches < config.eval_batches) and (
            batch := collate.next_batch(stream, batch_size=config.batch_size,
                                        seq_len=config.seq_len, pack=config.pack)) is not None:
        with torch.autocast(ctx.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            losses = loss_module(**_to_device(batch, ctx.device))
        loss_sum, count, batches = loss_sum + float(losses.sum()), count + len(losses), batches + 1
    loss_module.train(was_training)
    total, tokens = distributed.sum_all([loss_sum, count], ctx)
    return total / tokens if tokens else None


def _evaluate_and_log(loss_module, dataset, config, ctx, step, history, log, progress) -> None:
    val = evaluate(loss_module, dataset, config, ctx)
    if val is not None:
        history["val_loss"].append([step, val])
        progress.clear()
        log(f"step {step} val_loss {val:.4f}")


def _to_device(batch: collate.Batch, device: torch.device) -> Dict[str, torch.Tensor]:
    tensors = {"input_ids": batch.input_ids, "labels": batch.labels,
               "position_ids": batch.position_ids}
    if batch.attention_mask is not None:
        tensors["attention_mask"] = batch.attention_mask
    if batch.segments is not None:
        tensors["segments"] = batch.segments
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in tensors.items()}


def _empty_batch() -> collate.Batch:
    """Two tokens with nothing to train."""
    return collate.pad_examples([data.TrainingSequence(np.zeros(2, np.int32),
                                              np.full(2, collate.IGNORE_INDEX, np.int32), "")], 2)


def _autocast_dtype(dtype: str, device: torch.device) -> Optional[torch.dtype]:
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"
                               and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def _new_history() -> Dict[str, Any]:
    return {"train_loss": [], "val_loss": [], "tokens": 0, "trained_tokens": 0, "slots": 0,
            "truncated_examples": 0, "train_seconds": 0.0}


def _summary(config: TrainConfig, ctx: distributed.Context, dataset: OutputDataset, step: int,
             stop_reason: str, history: Dict[str, Any], vocab_rows: int,
             trained_positions_only: bool) -> Dict[str, Any]:
    losses = history["train_loss"]
    seconds = history["train_seconds"]
    return {
        "steps": step, "stop_reason": stop_reason,
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "train_loss": losses, "val_loss": history["val_loss"][-1][1] if history["val_loss"] else None,
        "val_losses": history["val_loss"],
        "tokens": history["tokens"], "trained_tokens": history["trained_tokens"],
        "padding_slots": history["slots"],
        # Real tokens per row slot: how much of each batch is data rather than padding.
        "packing_efficiency": history["tokens"] / history["slots"] if history["slots"] else None,
        "truncated_examples": history["truncated_examples"],
        "train_seconds": seconds,
        "tokens_per_second": history["tokens"] / seconds if seconds else 0.0,
        "trained_tokens_per_second": history["trained_tokens"] / seconds if seconds else 0.0,
        "world_size": ctx.world_size, "device": str(ctx.device), "model": config.model,
        "vocab_rows": vocab_rows, "logits_at_trained_positions_only": trained_positions_only,
        "data": dataset.root, "dataset_fingerprint": dataset.fingerprint,
        "config": config.as_dict(),
    }


def _export(model: torch.nn.Module, dataset: OutputDataset, output: str) -> None:
    """The trained model in Hugging Face format with the dataset's tokenizer: OUTPUT/final/."""
    with tempfile.TemporaryDirectory(prefix="sftprep-final-") as local:
        model.save_pretrained(local)
        for name in sorted(os.listdir(local)):
            with open(os.path.join(local, name), "rb") as handle:
                storage.write_bytes(storage.join(output, "final", name), handle.read())
    for path in dataset.tokenizer_files():
        storage.write_bytes(storage.join(output, "final", path.rsplit("/", 1)[-1]),
                          storage.read_bytes(path))


class _Throughput:
    """Tokens per second over the steps only (not evaluation or checkpoint writing)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._window: List[tuple] = []
        self._began = 0.0

    def start(self) -> None:
        self._began = time.perf_counter()

    def stop(self, tokens: float, trained: float) -> None:
        elapsed = time.perf_counter() - self._began
        self.seconds += elapsed
        self._window = (self._window + [(elapsed, tokens, trained)])[-20:]

    def per_second(self) -> Tuple[float, float]:
        """(tokens, trained tokens) per second over the last 20 steps (at least one)."""
        seconds, tokens, trained = (sum(column) for column in zip(*self._window))
        return tokens / max(seconds, 1e-9), trained / max(seconds, 1e-9)


class _Progress:
    """A one-line bar on stderr, only for a person watching (stderr is a terminal)."""

    WIDTH = 30

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled and sys.stderr.isatty()
        self.began = time.perf_counter()

    def update(self, step: int) -> None:
        if not self.enabled:
            return
        done = int(self.WIDTH * step / self.total)
        rate = step / max(time.perf_counter() - self.began, 1e-9)
        sys.stderr.write(f"\r[{'#' * done}{'.' * (self.WIDTH - done)}] {step}/{self.total} "
                         f"{rate:.2f} step/s")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.WIDTH + 40) + "\r")
            sys.stderr.flush()
