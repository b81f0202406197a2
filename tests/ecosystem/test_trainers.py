"""The README recipes for Hugging Face `Trainer` and TRL `SFTTrainer`, run on CPU with a tiny
random Llama: they train on the pipeline's own input_ids and labels, unchanged. The loss each
trainer computes for a batch must equal a cross entropy over exactly our label != -100
positions (shifted, as causal LMs predict the next token)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sftprep import ecosystem  # noqa: E402

IGNORE_INDEX = -100
CHECK_ROWS = 4  # the shortest validation rows: different lengths, so padding is exercised


@pytest.fixture(scope="module")
def tokenizer(prepared):
    return transformers.AutoTokenizer.from_pretrained(ecosystem.tokenizer_dir(str(prepared)))


@pytest.fixture(scope="module")
def data(prepared):
    # README recipe: load the splits, keep the two training columns
    from datasets import load_dataset

    return load_dataset("parquet", data_files=ecosystem.data_files(str(prepared))).select_columns(
        ["input_ids", "labels"])


def tiny_llama(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    return transformers.LlamaForCausalLM(config)


def check_rows(prepared, data):
    """The CHECK_ROWS shortest validation rows: as a datasets split for the trainer, and straight
    from Parquet with pyarrow as the reference."""
    from datasets import load_dataset

    order = [("num_tokens", "ascending"), ("example_id", "ascending")]
    split = load_dataset("parquet", data_files=ecosystem.data_files(str(prepared)))["validation"]
    subset = split.sort(["num_tokens", "example_id"]).select(range(CHECK_ROWS))
    table = pq.read_table(ecosystem.data_files(str(prepared))["validation"][0])
    reference = table.sort_by(order).slice(0, CHECK_ROWS).to_pylist()
    assert len({r["num_tokens"] for r in reference}) > 1
    return subset.select_columns(["input_ids", "labels"]), reference


def padded(reference, pad_id):
    """input_ids, attention_mask and labels of the reference rows, right-padded by hand."""
    width = max(r["num_tokens"] for r in reference)
    ids = np.full((len(reference), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    labels = np.full_like(ids, IGNORE_INDEX)
    for i, row in enumerate(reference):
        n = row["num_tokens"]
        ids[i, :n], mask[i, :n], labels[i, :n] = row["input_ids"], 1, row["labels"]
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)


def masked_cross_entropy(model, ids, mask, labels):
    """Mean next-token cross entropy over the positions our labels train, and nothing else."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX)


def assert_batch_and_loss(trainer, model, batch, reference, pad_id):
    ids, mask, labels = padded(reference, pad_id)
    width = ids.size(1)
    # the collator may pad further (TRL rounds up to a multiple): compare the common width and
    # require the extra columns to be pure padding
    assert torch.equal(batch["input_ids"][:, :width], ids)
    assert torch.equal(batch["labels"][:, :width], labels)
    assert (batch["labels"][:, width:] == IGNORE_INDEX).all()
    if "attention_mask" in batch:
        assert torch.equal(batch["attention_mask"][:, :width], mask)
        assert not batch["attention_mask"][:, width:].any()
    trained = int((labels[:, 1:] != IGNORE_INDEX).sum())
    # label 0 (BOS) is never trained, so every trained token is a shifted target
    assert trained == sum(r["num_trainable_tokens"] for r in reference)

    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        expected = masked_cross_entropy(model, ids, mask, labels)
        unmasked = torch.where(mask == 1, ids, IGNORE_INDEX)
        everything = masked_cross_entropy(model, ids, mask, unmasked)
    assert math.isfinite(float(loss))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(everything) - float(expected)) > 1e-3  # the mask changes the loss


def assert_trained(trainer, steps):
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == steps and len(losses) == steps
    assert all(math.isfinite(x) and x > 0 for x in losses + [result.training_loss])


def test_hf_trainer_recipe(prepared, tokenizer, data, tmp_path):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model = tiny_llama(tokenizer)
    assert len(tokenizer) == ecosystem.manifest(str(prepared))["tokenizer"]["vocab_size"]
    # README recipe
    model.resize_token_embeddings(len(tokenizer))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                               max_steps=2, logging_steps=1, save_strategy="no",
                               report_to="none", use_cpu=True),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
    )
    subset, reference = check_rows(prepared, data)
    batch = next(iter(trainer.get_eval_dataloader(subset)))
    assert len(batch["input_ids"]) == CHECK_ROWS  # the eval batch size (8) holds the subset
    assert_batch_and_loss(trainer, model, batch, reference, tokenizer.pad_token_id)
    assert_trained(trainer, 2)


def test_trl_sft_trainer_recipe(prepared, tokenizer, data, tmp_path):
    trl = pytest.importorskip("trl")
    from trl import SFTConfig, SFTTrainer

    model = tiny_llama(tokenizer)
    # README recipe
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2,
                       max_steps=2, logging_steps=1, save_strategy="no",
                       report_to="none", use_cpu=True, bf16=False,  # CPU: bf16 is slow there
                       max_length=None, dataset_kwargs={"skip_prepare_dataset": True}),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
    )
    assert isinstance(trainer.data_collator,
                      trl.trainer.sft_trainer.DataCollatorForLanguageModeling)
    # nothing re-masked, truncated or dropped
    assert trainer.train_dataset["labels"] == data["train"]["labels"]
    subset, reference = check_rows(prepared, data)
    batch = next(iter(trainer.get_eval_dataloader(subset)))
    assert len(batch["input_ids"]) == CHECK_ROWS
    assert_batch_and_loss(trainer, model, batch, reference, tokenizer.pad_token_id)
    assert_trained(trainer, 2)


def test_trl_default_preparation_truncates_and_drops(tokenizer, data, tmp_path):
    """What the recipe's settings prevent: TRL's own preparation keeps a `labels` column as it is,
    but cuts every row to SFTConfig.max_length (default 1024, keep_start) and then drops rows
    left with no trained token. Shown here at max_length=128 against our 256-token rows."""
    pytest.importorskip("trl")
    from trl import SFTConfig, SFTTrainer

    def prepared_train(**options):
        trainer = SFTTrainer(
            model=tiny_llama(tokenizer), processing_class=tokenizer, train_dataset=data["train"],
            args=SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **options))
        return trainer.train_dataset

    ours = data["train"]
    untouched = prepared_train(max_length=None)
    assert untouched["input_ids"] == ours["input_ids"] and untouched["labels"] == ours["labels"]

    cut = prepared_train(max_length=128)
    kept = [(ids[:128], labels[:128]) for ids, labels in zip(ours["input_ids"], ours["labels"])
            if any(x != IGNORE_INDEX for x in labels[:128])]
    assert 0 < len(kept) < ours.num_rows  # some rows had nothing trained in their first 128 tokens
    assert list(zip(cut["input_ids"], cut["labels"])) == kept
