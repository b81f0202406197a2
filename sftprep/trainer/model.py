"""The model: a Hugging Face causal LM from a local directory, or a tiny random Llama, checked
against the dataset's tokenizer, wrapped in a module that returns the per-token loss."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sftprep import contained
from sftprep.config import ConfigError
from sftprep.pipeline import files
from sftprep.trainer.collate import IGNORE_INDEX
from sftprep.trainer.data import Dataset

TINY = "tiny"


def build_tiny_model(vocab_size: int, max_positions: int, seed: int) -> nn.Module:
    """A 2-layer Llama with hidden size 64 and tied embeddings, sized to the dataset's vocab.

    With a 128k vocabulary almost all of its 8M parameters are the embedding, which is what
    the data exercises; the rest is kept small so CPU runs take seconds.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=max(max_positions, 128),
                         tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_model(path: str, dataset: Dataset) -> nn.Module:
    """A local Hugging Face causal LM whose tokenizer agrees with the dataset's, with its
    embeddings grown to the dataset's vocabulary when the pipeline added tokens."""
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(path):
        raise ConfigError(f"--model {path}: not a directory; give a local Hugging Face model "
                          f"directory or `{TINY}`")
    check_tokenizer(path, dataset)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                     dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--model {path}: cannot load a causal LM: {err}") from None
    return fit_vocabulary(model, dataset, path)


def fit_vocabulary(model: nn.Module, dataset: Dataset, name: str) -> nn.Module:
    rows = model.get_input_embeddings().num_embeddings
    if rows >= dataset.vocab_size:
        return model  # models often pad their vocabulary; extra rows are never looked up
    base = dataset.vocab_size - len(dataset.added_tokens)
    if rows < base:
        raise ConfigError(f"--model {name} has {rows} embeddings but the dataset's tokenizer has "
                          f"{base} tokens before the {len(dataset.added_tokens)} sftprep added: "
                          "the data was tokenized for another model; prepare it with "
                          "--tokenizer set to this model")
    # New rows start at the mean of the old ones (transformers' mean_resizing), a neutral
    # start for the control tokens the template added.
    model.resize_token_embeddings(dataset.vocab_size, mean_resizing=True)
    return model


def check_tokenizer(model_dir: str, dataset: Dataset) -> None:
    """Refuse a model whose tokenizer maps any token to another id than the dataset's does.

    The same tokenizer.json (same fingerprint) passes at once. Otherwise the dataset's tokenizer
    must extend the model's: the pipeline may only have appended tokens.
    """
    mine = os.path.join(model_dir, "tokenizer.json")
    if not os.path.exists(mine):
        return  # no tokenizer to compare; the vocabulary size check still applies
    with open(mine, "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() == dataset.tokenizer_fingerprint:
        return
    from tokenizers import Tokenizer

    theirs_path = contained.check_inside(
        dataset.root, files.join(dataset.tokenizer_dir, "tokenizer.json"), "tokenizer file")
    theirs = Tokenizer.from_str(files.read_text(theirs_path))
    model_vocab = Tokenizer.from_str(data.decode("utf-8")).get_vocab(with_added_tokens=True)
    data_vocab = theirs.get_vocab(with_added_tokens=True)
    for token, index in sorted(model_vocab.items(), key=lambda item: item[1]):
        if data_vocab.get(token) != index:
            raise ConfigError(
                f"--model {model_dir}: its tokenizer does not match the dataset's (tokenizer "
                f"fingerprint {dataset.tokenizer_fingerprint[:12]} in the manifest): token "
                f"{json.dumps(token)} is id {index} for the model and "
                f"{data_vocab.get(token)} in the data; prepare the data with --tokenizer "
                f"{model_dir}")


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean mask, True = may attend: causal, and only within a segment.

    >>> block_causal_mask(torch.tensor([[1, 1, 2]]))[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    length = segments.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


class TokenLoss(nn.Module):
    """The causal LM plus its loss: forward returns the cross entropy of every trained token
    (labels shifted inside, -100 ignored), so callers can sum, count or map them back.

    Logits are computed only at trained positions when the model's output is just its output
    embedding applied to the last hidden state (checked once on a probe input): with a 128k
    vocabulary the full (B, T, V) logits dominate time and memory. Models that post-process
    logits (soft-capping, scaling) fall back to the model's own logits.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.trained_positions_only = _head_is_plain(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        if segments is not None:
            attention_mask = self._packed_mask(segments)
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False)
        if self.trained_positions_only:
            hidden = self.model.get_decoder()(**inputs).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])
        else:
            logits = self.model(**inputs).logits[:, :-1][keep]
        return F.cross_entropy(logits.float(), targets[keep], reduction="none")

    def _packed_mask(self, segments: torch.Tensor) -> Optional[torch.Tensor]:
        implementation = self.model.config._attn_implementation
        if implementation == "sdpa":
            return block_causal_mask(segments)
        if implementation == "eager":  # eager attention adds the mask to the scores
            allowed = block_causal_mask(segments)
            bias = torch.zeros(allowed.shape, dtype=torch.float32, device=segments.device)
            return bias.masked_fill(~allowed, torch.finfo(torch.float32).min)
        if implementation.startswith("flash"):
            # flash-attention splits rows where position_ids restart (varlen), given no mask.
            return None
        raise ConfigError(f"--pack needs sdpa, eager or flash attention; the model uses "
                          f"{implementation}")


@torch.no_grad()
def _head_is_plain(model: nn.Module) -> bool:
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    if decoder is None or head is None or decoder is model:
        return False
    was_training = model.training
    model.eval()
    try:
        probe = torch.arange(1, 9, device=next(model.parameters()).device)[None]
        full = model(input_ids=probe, use_cache=False).logits
        split = head(decoder(input_ids=probe, use_cache=False).last_hidden_state)
        return full.shape == split.shape and torch.allclose(full, split, atol=1e-5, rtol=1e-4)
    except (TypeError, AttributeError):
        return False
    finally:
        model.train(was_training)
