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

from sftprep import contained
from sftprep.pipeline import files

POINTER = "checkpoint.json"
DIRECTORY = "checkpoints"


def latest(output: str) -> Optional[Dict[str, Any]]:
    """The pointer to the newest checkpoint in this directory, if any; a malformed one is a
    DatasetError (one line)."""
    path = files.join(output, POINTER)
    if not files.exists(path):
        return None
    pointer = contained.parse_json_object(
        contained.read_small(path, contained.MAX_LATEST_BYTES), path)
    if not isinstance(pointer.get("step"), int) or not isinstance(pointer.get("path"), str):
        raise contained.DatasetError(f"{path} must hold an integer step and a path; it was not "
                                     "written by `sftprep train`")
    return pointer


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
    # The pointer may only name a file inside --output.
    path = contained.inside(output, pointer["path"], f"{files.join(output, POINTER)}: path")
    data = files.read_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise contained.DatasetError(f"{path}: not a checkpoint of `sftprep train` "
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
