"""The train stage as a long GPU run needs it, on tiny models on the CPU: packing that changes no
loss, checkpoints that survive kill -9 and give the same adapter, resume of this run only,
continuing an adapter, and data-parallel runs through `accelerate launch`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import pytest
import torch
import yaml

from pipeline.core.errors import UserError
from pipeline.core.params import load_params
from pipeline.engines import checkpoints
from pipeline.engines.modeling import IGNORE_INDEX, encode_example, train_tiny_tokenizer
from pipeline.engines.packing import PackedCollator, PaddedCollator, as_dataset, pack
from pipeline.stages import base, train
from conftest import BIN, env_with_bin
from test_training import TEXTS, final_data, lora_weights

TINY = {"base_model": "tiny", "lora": {"target_modules": [], "dropout": 0.1}, "batch_size": 1,
        "max_seq_len": 40, "lr": 0.01, "eval_every": 3}


def write_params(root, **train) -> None:
    merged = {**TINY, **train}
    (root / "params.yaml").write_text(yaml.safe_dump({"train": merged}))


def tenny(root, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tenny"), *args], cwd=root, env=env_with_bin(), capture_output=True,
                          text=True, timeout=300, **kw)


def train_here(root, **train_params) -> None:
    """`tenny train` in this process (no interpreter start-up): what the subprocess tests cannot need."""
    write_params(root, **train_params)
    train.run(load_params(root / "params.yaml"))


@pytest.fixture
def project(in_tmp):
    final_data(in_tmp)
    write_params(in_tmp)
    base.run(load_params(in_tmp / "params.yaml"))
    return in_tmp


# ---------------------------------------------------------------- packing


def examples(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(2, 30, (1,), generator=g))
        ids = torch.randint(2, 300, (length,), generator=g).tolist()
        cut = int(torch.randint(0, length - 1, (1,), generator=g))  # a masked prompt before the answer
        out.append((ids, [IGNORE_INDEX] * cut + ids[cut:]))
    return out


def test_pack_keeps_every_sample_whole_and_within_a_row():
    exs = examples(200)
    rows = pack(exs, 64)
    assert sorted(i for row in rows for i in row) == list(range(200)), "every sample exactly once"
    assert all(sum(len(exs[i][0]) for i in row) <= 64 for row in rows)
    lower_bound = -(-sum(len(ids) for ids, _ in exs) // 64)
    assert len(rows) <= lower_bound + 2, "best-fit fills rows nearly full"
    with pytest.raises(ValueError, match="more than a row"):
        pack([([1] * 65, [1] * 65)], 64)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_per_sample_losses_packed_equal_unpacked(arch):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=128, n_embd=32, n_layer=2, n_head=2))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128))
    model.eval()
    exs = examples(10, seed=1)

    def token_losses(batch):
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), labels.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
        return loss, labels

    # Unpacked: each sample alone, padded with a mask; its loss summed over its labelled tokens.
    alone = []
    for ex in exs:
        loss, labels = token_losses(PaddedCollator(0)([{"input_ids": ex[0], "labels": ex[1]}]))
        alone.append(float(loss[labels != IGNORE_INDEX].sum()))
    # Packed: the same samples in rows of 64; walk each row's segments to sum per sample.
    packed = [0.0] * len(exs)
    rows = pack(exs, 64)
    batch = PackedCollator(0)(as_dataset(exs, True, 64))
    loss, labels = token_losses(batch)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(exs[i][0])
            span = slice(at, at + n - 1)  # shifted: positions at..at+n-2 predict the sample's tokens 1..n-1
            packed[i] = float(loss[r, span][labels[r, span] != IGNORE_INDEX].sum())
            at += n
    assert packed == pytest.approx(alone, abs=1e-4)
    assert len(rows) < len(exs), "the test packed something"


def test_packed_rows_mask_exactly_the_first_token_of_each_sample():
    exs = examples(6)
    batch = PackedCollator(0)(as_dataset(exs, True, 64))
    for r, row in enumerate(pack(exs, 64)):
        at = 0
        for i in row:
            ids, labs = exs[i]
            got = batch["labels"][r, at:at + len(ids)].tolist()
            assert got == [IGNORE_INDEX] + labs[1:]
            assert batch["position_ids"][r, at:at + len(ids)].tolist() == list(range(len(ids)))
            at += len(ids)
    assert "attention_mask" not in batch


# ---------------------------------------------------------------- labels per format


def test_masked_tokens_are_exactly_the_non_answer_ones():
    from pipeline.core.records import make_record

    tok = train_tiny_tokenizer(TEXTS + ["User: Assistant: Be dry. Topic? More? deadlines"], vocab_size=400)
    eos = tok.eos_token
    text = make_record(text="printers sense fear")
    ids, labels = encode_example(text, tok, None)
    assert labels == ids  # plain text: every token is the answer

    pc = make_record(prompt="Topic 1?", completion=" printers sense fear")
    ids, labels = encode_example(pc, tok, None)
    learned = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(learned) == " printers sense fear" + eos
    assert tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX]) == "Topic 1?"

    chat = make_record(messages=[{"role": "system", "content": "Be dry."}, {"role": "user", "content": "Topic?"},
                                 {"role": "assistant", "content": "printers sense fear"},
                                 {"role": "user", "content": "More?"}, {"role": "assistant", "content": "deadlines"}])
    ids, labels = encode_example(chat, tok, None)
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    masked = tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    # The fallback template: "Assistant:" opens a turn the model does not write; content + EOS is the answer.
    assert learned == f" printers sense fear{eos}\n deadlines{eos}"
    assert masked == "Be dry.\n\nUser: Topic?\nAssistant:User: More?\nAssistant:"


# ---------------------------------------------------------------- checkpoints and resume


def test_kill_9_after_a_checkpoint_then_resume_gives_the_same_adapter(project, capsys):
    write_params(project, max_steps=9, save_every=2, keep_checkpoints=2)
    proc = subprocess.Popen([str(BIN / "tenny"), "train"], cwd=project, env=env_with_bin(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # wait for the first sealed checkpoint, then kill without warning
        if "checkpoint at step 4" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    assert not (project / "models/adapter").exists()
    run_dir = next((project / "models/checkpoints").iterdir())
    sealed = [c.step for c in checkpoints.complete(run_dir)]
    assert 4 in sealed and len(sealed) <= 2

    capsys.readouterr()
    train.run(load_params(project / "params.yaml"))  # the same `tenny train`, in this process
    at = max(sealed)
    assert f"resuming from step {at}" in capsys.readouterr().out
    status = json.loads((project / "dvclive/run.json").read_text())
    assert status["status"] == "finished" and status["resumed_from_step"] == at and status["step"] == 9
    steps = [int(r.split("\t")[0]) for r in (project / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 10)), "the plot has each step once, killed run and resumed run together"
    after_resume = lora_weights(project / "models/adapter")

    shutil.rmtree(project / "models/checkpoints")
    train_here(project, max_steps=9, save_every=2, keep_checkpoints=2, resume="never")
    uninterrupted = lora_weights(project / "models/adapter")
    assert after_resume.keys() == uninterrupted.keys()
    worst = max(float((after_resume[k] - uninterrupted[k]).abs().max()) for k in after_resume)
    assert worst <= 1e-5, f"resumed adapter differs from an uninterrupted run by {worst}"
    assert any(float(v.abs().max()) > 1e-3 for k, v in uninterrupted.items() if "lora_B" in k), "training moved LoRA B"


def test_sigterm_saves_a_checkpoint_and_stops(project):
    write_params(project, max_steps=400, save_every=1000)
    proc = subprocess.Popen([str(BIN / "tenny"), "train"], cwd=project, env=env_with_bin(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # The bar goes to stderr; the first step's postfix says the loop is running.
    while "loss=" not in proc.stderr.read(64):
        pass
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "saving a checkpoint" in out and "run `tenny train` again" in out
    run_dir = next((project / "models/checkpoints").iterdir())
    (ckpt,) = checkpoints.complete(run_dir)
    assert 0 < ckpt.step < 400
    assert json.loads((project / "dvclive/run.json").read_text())["status"] == "interrupted"


def test_checkpoints_of_another_run_are_ignored_with_a_note(project, capsys):
    train_here(project, max_steps=2, save_every=1)
    capsys.readouterr()
    train_here(project, max_steps=2, save_every=1, lr=0.02)  # another run: other params
    out = capsys.readouterr().out
    assert "ignoring checkpoints of another run" in out and "resuming" not in out
    assert len(list((project / "models/checkpoints").iterdir())) == 2


def test_an_incomplete_checkpoint_is_never_resumed(project):
    train_here(project, max_steps=3, save_every=1, keep_checkpoints=3)
    run_dir = next((project / "models/checkpoints").iterdir())
    newest = run_dir / "checkpoint-3"
    (newest / checkpoints.MARKER).unlink()  # as if killed mid-save
    (run_dir / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"half")
    assert [c.step for c in checkpoints.complete(run_dir)] == [1, 2]
    p = load_params(project / "params.yaml")
    assert train.resume_point(p.train, run_dir).step == 2


def test_a_named_checkpoint_of_another_lora_shape_is_refused(project):
    train_here(project, max_steps=1, save_every=1)
    ckpt = checkpoints.complete(next((project / "models/checkpoints").iterdir()))[-1]
    p = load_params(project / "params.yaml", [f"train.resume={ckpt.path}", "train.lora.r=4"])
    with pytest.raises(UserError, match=r"checkpoint-1: made for base 'tiny' with LoRA .*'r': 8.*refused"):
        train.resume_point(p.train, project / "models/checkpoints/run-x")
    p = load_params(project / "params.yaml", [f"train.resume={project}"])
    with pytest.raises(UserError, match="not a complete tenny checkpoint"):
        train.resume_point(p.train, project / "models/checkpoints/run-x")


# ---------------------------------------------------------------- continue from an adapter


def test_continue_from_an_adapter_starts_from_its_weights(project):
    train_here(project, max_steps=3)
    shutil.copytree(project / "models/adapter", project / "first")
    first = lora_weights(project / "first")
    # lr 1e-9: the continued adapter must still be (almost) the first one, not a fresh LoRA (B = 0).
    train_here(project, max_steps=1, init_adapter="first", lr=1e-9)
    second = lora_weights(project / "models/adapter")
    assert first.keys() == second.keys()
    assert max(float((first[k] - second[k]).abs().max()) for k in first) < 1e-4
    assert any(float(v.abs().max()) > 1e-3 for k, v in second.items() if "lora_B" in k)

    with pytest.raises(UserError, match="train.init_adapter: data: not a LoRA adapter folder"):
        train_here(project, max_steps=1, init_adapter="data")


def test_target_modules_take_peft_suffixes(project):
    train_here(project, max_steps=1, lora={"target_modules": ["attn.c_attn"]})
    cfg = json.loads((project / "models/adapter/adapter_config.json").read_text())
    assert cfg["target_modules"] == ["attn.c_attn"]
    with pytest.raises(UserError, match=r"\['attn.nope'\] match no layer"):
        train_here(project, max_steps=1, lora={"target_modules": ["c_attn", "attn.nope"]})


# ---------------------------------------------------------------- several processes


@pytest.mark.slow
def test_two_processes_follow_the_same_loss_curve_as_one(project):
    """DDP over 2 CPU processes at the same global batch: the same losses; only the main process writes."""
    train_here(project, max_steps=4, batch_size=4, packing=False, save_every=2,
               lora={"target_modules": [], "dropout": 0.0})
    curve_one = (project / "dvclive/plots/metrics/train/loss.tsv").read_text()
    shutil.rmtree(project / "models/checkpoints")
    shutil.rmtree(project / "dvclive")

    write_params(project, max_steps=4, batch_size=2, packing=False, save_every=2, lora={"target_modules": [], "dropout": 0.0})
    # accelerate 1.x runs `--cpu --num_processes 2` as ONE process; --multi_gpu launches N
    # processes through torchrun, which on a machine without a GPU train on the CPU over gloo.
    two = subprocess.run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", str(BIN / "tenny"), "train"],
                         cwd=project, env={**env_with_bin(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("train: 4 steps") == 1, "one process reports and writes"
    assert "2 processes" in two.stdout
    rows_one = [r.split("\t") for r in curve_one.splitlines()[1:]]
    rows_two = [r.split("\t") for r in (project / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows_two] == [r[0] for r in rows_one]
    for (_, a), (_, b) in zip(rows_one, rows_two):
        assert float(a) == pytest.approx(float(b), abs=1e-4)
    run_dir = next((project / "models/checkpoints").iterdir())
    assert [c.step for c in checkpoints.complete(run_dir)] == [2, 4]


# ---------------------------------------------------------------- bad input


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(project, capsys):
    import resource

    train_here(project, max_steps=3, save_every=1, keep_checkpoints=3)
    run_dir = next((project / "models/checkpoints").iterdir())
    shutil.rmtree(run_dir / "checkpoint-3")  # as if the run had died before its last save
    adapter_before = lora_weights(project / "models/adapter")

    def small_files_only():  # a write past 4 KiB fails as on a full disk (EFBIG instead of ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    full = tenny(project, "train", preexec_fn=small_files_only)
    assert full.returncode == 2, full.stderr[-2000:]
    assert "the last complete checkpoint (step 2) is intact" in full.stderr
    assert "run again to continue" in full.stderr
    assert [c.step for c in checkpoints.complete(run_dir)] == [1, 2]
    after = lora_weights(project / "models/adapter")
    assert all(torch.equal(adapter_before[k], after[k]) for k in after), "the trained adapter is untouched"
    assert json.loads((project / "dvclive/run.json").read_text())["status"] == "failed"

    capsys.readouterr()
    train.run(load_params(project / "params.yaml"))  # space again: it continues from step 2
    assert "resuming from step 2" in capsys.readouterr().out


def test_out_of_gpu_memory_names_the_knobs(project, monkeypatch):
    """No GPU here to exhaust: the Trainer raises CUDA's own error type, as it would on a card."""
    from transformers import Trainer

    def oom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train", oom)
    p = load_params(project / "params.yaml", ["train.max_steps=1"])
    with pytest.raises(UserError, match=r"out of GPU memory: lower train\.batch_size.*max_seq_len.*gradient_checkpointing.*4bit"):
        train.run(p)
    assert json.loads((project / "dvclive/run.json").read_text())["status"] == "failed"
