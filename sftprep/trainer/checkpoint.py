"""Checkpoints: one file per saved step, and a small pointer to the newest, written last.

A checkpoint holds everything an exact resume needs: model, optimizer and scheduler state,
the step, the config, every rank's data position and RNG state, and the history so far. The
pointer (checkpoint.json) is replaced in one operation after the file is complete, so a run
killed while saving resumes from the previous checkpoint.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from typing import Any, Dict, Optional

import torch

from sftprep import storage
from sftprep.dataset import MAX_LATEST_BYTES, inside, parse_json_object, read_small
from sftprep.errors import DatasetError

POINTER = "checkpoint.json"
DIRECTORY = "checkpoints"


def latest(output: str) -> Optional[Dict[str, Any]]:
    """The pointer to the newest checkpoint in this directory, if any; a malformed one is a
    DatasetError (one line)."""
    path = storage.join(output, POINTER)
    if not storage.exists(path):
        return None
    pointer = parse_json_object(
        read_small(path, MAX_LATEST_BYTES), path)
    if not isinstance(pointer.get("step"), int) or not isinstance(pointer.get("path"), str):
        raise DatasetError(f"{path} must hold an integer step and a path; it was not "
                                     "written by `sftprep train`")
    return pointer


def save(output: str, step: int, state: Dict[str, Any], keep: int) -> str:
    name = f"{DIRECTORY}/step-{step:08d}.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(storage.join(output, name), buffer.getvalue())
    storage.replace_bytes(storage.join(output, POINTER),
                        (json.dumps({"step": step, "path": name}) + "\n").encode())
    for old in storage.match(storage.join(output, DIRECTORY, "step-*.pt"))[:-keep]:
        storage.delete(old)
    return name


def load(output: str, pointer: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint `pointer` (from `latest`) names; it may only name a file inside --output."""
    path = inside(output, pointer["path"], f"{storage.join(output, POINTER)}: path")
    data = storage.read_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DatasetError(f"{path}: not a checkpoint of `sftprep train` "
                                     f"({detail[:200]})") from None


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
