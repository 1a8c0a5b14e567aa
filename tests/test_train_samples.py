"""Watching a run: tokens/s from training tokens only, answers while it trains (through a kill -9 and
resume: in test_train_engine.py, with the adapter it resumes to), early stopping that keeps the best step,
and the clear errors at start. Tiny models on the CPU."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.core import run_status as rs
from pipeline.core.errors import UserError
from pipeline.core.params import load_params
from pipeline.core.records import make_record, write_records
from pipeline.stages import base, train
from test_training import lora_weights

pytestmark = pytest.mark.timeout(300)

# Plain text samples: a hand count needs nothing but the tokenizer (each sample is its tokens + EOS).
TRAIN = [f"Sample {i}: printers sense fear and deadlines sense printers." for i in range(12)]
VAL = [make_record(prompt=f"Topic {i}?", completion=f"Printers {i} sense fear.") for i in range(4)]
TINY = {"base_model": "tiny", "lora": {"target_modules": [], "dropout": 0.0}, "batch_size": 2, "max_seq_len": 48,
        "lr": 0.01, "eval_every": 2, "resume": "never"}


def project(root, **train_params):
    write_records(root / "data/final/train.jsonl", [make_record(text=t) for t in TRAIN])
    write_records(root / "data/final/val.jsonl", VAL)
    write_params(root, **train_params)
    base.run(load_params(root / "params.yaml"))
    return root


def write_params(root, **train_params) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {**TINY, **train_params},
                                                      "eval": {"prompts": ["Say something dry."]}}))


def samples(root) -> list[dict]:
    return [json.loads(line) for line in (root / "dvclive" / rs.SAMPLES).read_text().splitlines()]


def tsv(root, name) -> list[tuple[int, float]]:
    lines = (root / "dvclive/plots/metrics" / f"{name}.tsv").read_text().splitlines()[1:]
    return [(int(a), float(b)) for a, b in (line.split("\t")[:2] for line in lines)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One epoch (12 samples, 6 steps of 2) with evals every 2 steps and answers every 2 steps."""
    import os

    root = tmp_path_factory.mktemp("run")
    here = os.getcwd()
    os.chdir(root)
    try:
        project(root, max_steps=6, sample_every=2, sample_max_new_tokens=6,
                sample_prompts=["Topic 1?", "Say something dry."])
        train.run(load_params(root / "params.yaml"))
    finally:
        os.chdir(here)
    return root


def test_tokens_count_training_tokens_only(finished):
    """The run's token count equals a count by hand of the train samples (one epoch: each once),
    though three eval passes ran through the same collator."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(finished / "models/adapter")
    by_hand = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in TRAIN)  # + EOS
    assert len(tsv(finished, rs.EVAL_LOSS)) == 3, "evals ran"
    counted = tsv(finished, rs.TOKENS)
    assert [s for s, _ in counted] == [1, 2, 3, 4, 5, 6]
    assert all(b > a for (_, a), (_, b) in zip(counted, counted[1:]))
    assert counted[-1][1] == by_hand
    training = json.loads((finished / "models/adapter/training.json").read_text())
    assert training["train_tokens"] == by_hand
    assert all(v > 0 for _, v in tsv(finished, rs.TOKENS_PER_S))


def test_answers_while_training(finished):
    rows = samples(finished)
    assert [(r["step"], r["prompt"]) for r in rows] == [
        (s, p) for s in (2, 4, 6) for p in ("Topic 1?", "Say something dry.")]
    for r in rows:
        assert isinstance(r["answer"], str) and 0 <= r["tokens"] <= 6
        assert r["eos"] == (r["tokens"] < 6) and r["repeated_4grams"] >= 0
    training = json.loads((finished / "models/adapter/training.json").read_text())
    cost = training["samples"]
    assert cost["every"] == 2 and cost["prompts"] == 2 and cost["rounds"] == 3
    assert 0 < cost["share_of_run"] < 1


def test_the_last_answers_are_the_adapters_greedy_answers(finished):
    """Step 6 is the last: its answers are what the saved adapter says, generated here by plain transformers."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(finished / "models/adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(finished / "models/base"),
                                      str(finished / "models/adapter")).eval()
    for row in [r for r in samples(finished) if r["step"] == 6]:
        # build.format: chat (the default): the prompt as a user turn of the chat template
        text = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                       tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        n = out.index(tok.eos_token_id) if tok.eos_token_id in out else len(out)
        assert row["answer"] == tok.decode(out[:n], skip_special_tokens=True).strip()
        assert row["tokens"] == n


# Answers through a kill -9 and resume (each step once, the cut last line dropped): one killed `tenny train`
# checks them with the adapter it resumes to, in test_train_engine.py's
# test_kill_9_after_a_checkpoint_then_resume_gives_the_same_adapter_and_answers_each_step_once.


def test_early_stopping_restores_the_best_step(in_tmp):
    """A high constant lr: val loss improves, then worsens; patience 1 stops there and keeps the best step,
    whose adapter equals a run that trained exactly that many steps."""
    stopping = dict(lr=0.2, lr_scheduler="constant_with_warmup", warmup_ratio=0, eval_every=1, max_steps=12,
                    sample_every=-1)
    project(in_tmp, **stopping, early_stopping={"patience": 1})
    train.run(load_params(in_tmp / "params.yaml"))
    training = json.loads((in_tmp / "models/adapter/training.json").read_text())
    es = training["early_stopping"]
    val = dict(tsv(in_tmp, rs.EVAL_LOSS))
    best = min(val, key=val.get)
    assert es["stopped_early"] and es["stopped_at_step"] < 12 and max(val) == es["stopped_at_step"]
    assert es["kept_step"] == best < es["stopped_at_step"], (es, val)
    assert es["best_val_loss"] == pytest.approx(val[best], abs=1e-5)
    assert f"kept step {best}" in es["reason"]
    status = json.loads((in_tmp / "dvclive" / rs.RUN_JSON).read_text())
    assert status["kept_step"] == best and "kept step" in status["stop_reason"]
    kept = lora_weights(in_tmp / "models/adapter")

    write_params(in_tmp, **{**stopping, "max_steps": best})
    train.run(load_params(in_tmp / "params.yaml"))
    exact = lora_weights(in_tmp / "models/adapter")
    worst = max(float((kept[k] - exact[k]).abs().max()) for k in kept)
    assert worst <= 1e-6, f"the kept adapter differs from {best} steps of training by {worst}"


def test_early_stopping_keeps_the_best_checkpoint_from_pruning(in_tmp):
    from pipeline.engines import checkpoints

    run_dir = in_tmp / "run"
    for step in (1, 2, 3, 4):
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        checkpoints.mark_complete(run_dir / f"checkpoint-{step}", {"step": step})
    checkpoints.prune(run_dir, 2, protect=str(run_dir / "checkpoint-1"))
    assert [c.step for c in checkpoints.complete(run_dir)] == [1, 3, 4]


def test_bad_input_fails_at_start(in_tmp, capsys):
    project(in_tmp)
    with pytest.raises(UserError, match="train.sample_prompts"):
        load_params(in_tmp / "params.yaml", ["train.sample_prompts=[]"])
    write_params(in_tmp, sample_prompts=["word " * 80])
    with pytest.raises(UserError, match=r"train\.sample_prompts\[0\].*train\.max_seq_len"):
        train.run(load_params(in_tmp / "params.yaml"))
    write_records(in_tmp / "data/final/val.jsonl", [])
    write_params(in_tmp, early_stopping={"patience": 2})
    with pytest.raises(UserError, match="build.val_fraction"):
        train.run(load_params(in_tmp / "params.yaml"))
    assert not (in_tmp / "dvclive" / rs.RUN_JSON).exists(), "nothing started"


def test_padding_free_rows_give_each_sample_its_own_loss():
    """The flash-attention rows (every sample of a batch in one row, no padding): per-sample losses equal
    each sample's loss alone. Checked here with SDPA, which reads the same position ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.engines.modeling import IGNORE_INDEX
    from pipeline.engines.packing import REAL_TOKENS, FlatCollator, PaddedCollator, as_dataset, pack

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                         attn_implementation="sdpa")).eval()
    g = torch.Generator().manual_seed(3)
    exs = []
    for _ in range(6):
        n = int(torch.randint(4, 20, (1,), generator=g))
        ids = torch.randint(2, 300, (n,), generator=g).tolist()
        exs.append((ids, [IGNORE_INDEX] * 2 + ids[2:]))

    def summed(batch) -> list[float]:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k not in ("labels", REAL_TOKENS)}, use_cache=False).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), labels.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
        return loss, labels

    alone = []
    for ids, labs in exs:
        loss, labels = summed(PaddedCollator(0)([{"input_ids": ids, "labels": labs}]))
        alone.append(float(loss.sum()))
    batch = FlatCollator(0, count_tokens=True)(as_dataset(exs, True, 64))
    assert batch["input_ids"].shape == (1, sum(len(i) for i, _ in exs)) and "attention_mask" not in batch
    assert batch[REAL_TOKENS] == sum(len(i) for i, _ in exs)
    loss, labels = summed(batch)
    flat, at = [0.0] * len(exs), 0
    for i in [i for row in pack(exs, 64) for i in row]:  # the samples in the order the rows hold them
        n = len(exs[i][0])
        flat[i] = float(loss[0, at:at + n - 1].sum())
        at += n
    assert flat == pytest.approx(alone, abs=1e-4)


def test_flash_attention_asked_for_without_it_goes_on_with_sdpa(capsys):
    from pipeline.engines import train_speed
    from pipeline.engines.packing import FlatCollator, PackedCollator

    assert train_speed.attention("flash_attention_2", "cpu") == "sdpa"
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "flash_attention_2 is not available" in line and "using sdpa" in line
    assert train_speed.attention("auto", "cpu") == "sdpa" and train_speed.attention("eager", "cpu") == "eager"
    assert isinstance(train_speed.collator_for(True, "flash_attention_2", 0), FlatCollator)
    assert isinstance(train_speed.collator_for(True, "sdpa", 0), PackedCollator)
    assert train_speed.log_every(0, "cpu") == 1 and train_speed.log_every(0, "cuda:0") == 10
    assert train_speed.log_every(5, "cuda") == 5
