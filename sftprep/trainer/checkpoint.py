"""Checkpoints: one file per saved step, and a small pointer to the newest, written last.

A checkpoint holds everything an exact resume needs: model, optimizer and scheduler state,
the step, the config, every rank's data position and RNG state, and the history so far. The
pointer (checkpoint.json) is replaced in one operation after the file is complete, so a run
killed while saving resumes from the previous checkpoint.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any, Dict, Optional

import torch

from sftprep.pipeline import files

POINTER = "checkpoint.json"
DIRECTORY = "checkpoints"


def latest(output: str) -> Optional[Dict[str, Any]]:
    """The pointer to the newest checkpoint in this directory, if any."""
    path = files.join(output, POINTER)
    return json.loads(files.read_text(path)) if files.exists(path) else None


def save(output: str, step: int, state: Dict[str, Any], keep: int) -> str:
    name = f"{DIRECTORY}/step-{step:08d}.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files.write_bytes(files.join(output, name), buffer.getvalue())
    files.replace_bytes(files.join(output, POINTER),
                        (json.dumps({"step": step, "path": name}) + "\n").encode())
    for old in files.match(files.join(output, DIRECTORY, "step-*.pt"))[:-keep]:
        files.delete_tree(old)
    return name


def load(output: str) -> Dict[str, Any]:
    pointer = latest(output)
    assert pointer is not None
    data = files.read_bytes(files.join(output, pointer["path"]))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
