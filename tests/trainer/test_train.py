"""`sftprep train` end to end on CPU: the loss falls on real data, resume is exact, mismatched
models are refused, and torchrun ranks train on disjoint rows."""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from sftprep.cli import main
from tests.trainer.conftest import assert_resumed_like_uninterrupted, summary

ROOT = pathlib.Path(__file__).resolve().parents[2]


def train(*args) -> int:
    return main(["train", *[str(a) for a in args]])


def test_tiny_model_learns_the_real_file(alpaca_data, tmp_path, capsys):
    out = tmp_path / "ckpt"
    # Few tokens per step: with a 128k vocabulary the output layer dominates CPU time.
    assert train("--data", alpaca_data, "--output", out, "--model", "tiny", "--max-steps", 32,
                 "--seq-len", 96, "--batch-size", 1, "--pack", "--lr", "1e-2",
                 "--warmup-steps", 3, "--log-every", 5, "--eval-every", 0,
                 "--eval-batches", 2) == 0
    result = summary(out)
    losses = [loss for _, loss in result["train_loss"]]
    assert len(losses) == 32 and result["steps"] == 32
    # A random model starts near ln(vocab) = 11.77 and learns the frequent tokens quickly. One
    # 96-token row is a noisy sample (a row of prompts only trains nothing and logs 0), so the
    # end is compared by its median.
    assert 11.0 < losses[0] < 12.5
    assert statistics.median(losses[-8:]) < losses[0] - 2.0, losses
    assert statistics.median(losses[-8:]) < statistics.median(losses[1:9]) - 0.75, losses
    assert result["val_loss"] < losses[0] - 1.5
    assert 0 < result["packing_efficiency"] <= 1.0
    assert result["trained_tokens"] < result["tokens"] <= 32 * 96
    log = capsys.readouterr().out
    lines = re.findall(r"^step (\d+) loss ([\d.]+) lr \S+ grad_norm \S+ tok/s (\d+) "
                       r"trained_tok/s (\d+) pack", log, re.M)
    assert [int(s) for s, *_ in lines] == [1, 5, 10, 15, 20, 25, 30]
    assert float(lines[-1][1]) == pytest.approx(losses[29], abs=1e-4)
    # The checkpoint and the exported model are where the log says.
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 32
    assert (out / "final" / "model.safetensors").exists()
    assert (out / "final" / "tokenizer.json").read_bytes() == (
        alpaca_data / "tokenizer" / "tokenizer.json").read_bytes()


RESUME_ARGS = ("--model", "tiny", "--max-steps", 6, "--seq-len", 64, "--batch-size", 1,
               "--grad-accum", 2, "--pack", "--lr", "3e-3", "--warmup-steps", 2,
               "--eval-every", 0, "--eval-batches", 1, "--save-every", 0)


def test_stop_and_resume_matches_an_uninterrupted_run(small_data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train("--data", small_data, "--output", whole, *RESUME_ARGS) == 0
    assert train("--data", small_data, "--output", parts, *RESUME_ARGS, "--stop-at", 3) == 0
    assert summary(parts)["stop_reason"] == "stop_at" and summary(parts)["steps"] == 3
    assert train("--data", small_data, "--output", parts, *RESUME_ARGS, "--resume") == 0
    assert_resumed_like_uninterrupted(whole, parts, steps=6)


def test_a_checkpoint_is_never_overwritten_or_resumed_with_other_options(small_data, tmp_path,
                                                                        capsys):
    out = tmp_path / "ckpt"
    args = ("--data", small_data, "--output", out, "--seq-len", 64, "--batch-size", 1,
            "--eval-every", 0, "--eval-batches", 1)
    assert train(*args, "--max-steps", 2, "--stop-at", 1) == 0
    capsys.readouterr()
    assert train(*args, "--max-steps", 2) == 2
    assert "holds a checkpoint (step 1); pass --resume" in capsys.readouterr().err
    assert train(*args, "--max-steps", 2, "--resume", "--lr", "1e-3") == 2
    assert "trained with --lr 0.0003" in capsys.readouterr().err
    # --max-steps is where the cosine ends: another value would change the schedule.
    assert train(*args, "--max-steps", 4, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sftprep: error: --resume: the checkpoint was trained with --max-steps 2; "
                   "resume with the same options or start a new --output")
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 1


def save_model(directory, vocab_size, tokenizer_json=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    if tokenizer_json is not None:
        (directory / "tokenizer.json").write_text(tokenizer_json)
    return directory


def test_a_model_directory_is_resized_for_added_tokens(small_data, tmp_path):
    # The base tokenizer has 4 fewer tokens than the dataset's (the markers template added 4).
    manifest = json.loads((small_data / "manifest.json").read_text())
    base = manifest["tokenizer"]["vocab_size"] - len(manifest["tokenizer"]["added_tokens"])
    model = save_model(tmp_path / "model", base,
                       (small_data / "tokenizer" / "tokenizer.json").read_text())
    out = tmp_path / "ckpt"
    assert train("--data", small_data, "--output", out, "--model", model, "--max-steps", 2,
                 "--seq-len", 64, "--batch-size", 1, "--eval-every", 0) == 0
    assert summary(out)["vocab_rows"] == manifest["tokenizer"]["vocab_size"]
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["vocab_size"] == manifest["tokenizer"]["vocab_size"]


def test_a_model_for_another_tokenizer_is_refused_in_one_line(small_data, tmp_path, capsys):
    small = save_model(tmp_path / "small", 1000)
    assert train("--data", small_data, "--output", tmp_path / "a", "--model", small,
                 "--max-steps", 1) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("sftprep: error: --model") and "has 1000 embeddings" in err

    tokenizer = json.loads((small_data / "tokenizer" / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two ids swapped
    other = save_model(tmp_path / "other", 129284, json.dumps(tokenizer))
    assert train("--data", small_data, "--output", tmp_path / "b", "--model", other,
                 "--max-steps", 1) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "its tokenizer does not match the dataset's" in err
    assert not (tmp_path / "b" / "checkpoint.json").exists()


def test_torchrun_ranks_train_on_disjoint_rows_that_cover_the_epoch(small_data, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               TRANSFORMERS_VERBOSITY="error")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "sftprep.trainer.cli",
               "--data", str(small_data), "--output", str(out), "--model", "tiny",
               "--epochs", "1", "--max-steps", "100", "--seq-len", "64", "--batch-size", "2",
               "--eval-every", "0", "--record-examples", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = {}
    for rank in (0, 1):
        (path,) = (out / "examples").glob(f"rank-{rank:05d}-*.tsv")
        seen[rank] = [line.split("\t")[1] for line in path.read_text().splitlines()]
    expected = [i for p in sorted((small_data / "train").glob("*.parquet"))
                for i in pq.read_table(p, columns=["example_id"]).column(0).to_pylist()]
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(expected)  # each row exactly once
    result = summary(out)
    assert result["world_size"] == 2 and result["stop_reason"] == "epochs"
    assert result["val_loss"] is not None
    # Both ranks' rows count in the step totals (rank 0 writes the summary); rows are cut to
    # --seq-len 64.
    assert result["tokens"] == sum(
        min(n, 64) for p in (small_data / "train").glob("*.parquet")
        for n in pq.read_table(p, columns=["num_tokens"]).column(0).to_pylist())
