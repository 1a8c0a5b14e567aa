"""The train stage as a long GPU run needs it, on tiny models on the CPU: packing that changes no
loss, checkpoints that survive kill -9 and give the same adapter, resume of this run only,
continuing an adapter, and data-parallel runs through `accelerate launch`."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch
import yaml

from pipeline.core import paths
from pipeline.core import run_status as rs
from pipeline.core.errors import UserError
from pipeline.core.params import load_params
from pipeline.engines import checkpoints, run_identity
from pipeline.core.records import make_record
from pipeline.engines.modeling import IGNORE_INDEX, encode_example, train_tiny_tokenizer
from pipeline.engines.packing import PackedCollator, PaddedCollator, as_dataset, pack
from pipeline.stages import base, train
from conftest import BIN, env_with_bin
from test_training import TEXTS, final_data, lora_weights, run_dirs, sigterm_during_step

# Answers while training stay on (the default), 3 tokens long: what these tests check does not depend on them.
TINY = {"base_model": "tiny", "lora": {"target_modules": [], "dropout": 0.1}, "batch_size": 1,
        "max_seq_len": 40, "lr": 0.01, "eval_every": 3, "sample_max_new_tokens": 3}


def write_params(root, **train) -> None:
    merged = {**TINY, **train}
    (root / "params.yaml").write_text(yaml.safe_dump({"train": merged}))


def tenny(root, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tenny"), *args], cwd=root, env=env_with_bin(), capture_output=True,
                          text=True, timeout=300, **kw)


def train_here(root, **train_params) -> int:
    """`tenny train` in this process (no interpreter start-up): what the subprocess tests cannot need."""
    write_params(root, **train_params)
    return train.run(load_params(root / "params.yaml"))


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
    assert learned == f" printers sense fear{eos} deadlines{eos}"  # each turn through its turn end (turn_end.py)
    assert masked == "Be dry.\n\nUser: Topic?\nAssistant:\nUser: More?\nAssistant:"


# ---------------------------------------------------------------- checkpoints and resume


def test_kill_9_after_a_checkpoint_then_resume_gives_the_same_adapter_and_answers_each_step_once(project, capsys):
    """One `tenny train` killed without warning serves both kill -9 checks (it replaces
    test_kill_9_after_a_checkpoint_then_resume_gives_the_same_adapter here and
    test_train_samples.py's test_samples_survive_kill_9_and_resume_without_duplicate_steps):
    the resumed adapter equals an uninterrupted run's, and the answers written while it
    trained (past its checkpoint, then a line the kill cut short) come out once per step."""
    write_params(project, max_steps=9, save_every=2, keep_checkpoints=2, sample_every=1, sample_max_new_tokens=3,
                 sample_prompts=["Topic 1?"])
    samples_file = project / "dvclive" / rs.SAMPLES
    proc = subprocess.Popen([str(BIN / "tenny"), "train"], cwd=project, env=env_with_bin(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # wait for the checkpoint at step 4 ...
            if "checkpoint at step 4" in line:
                break
        # ... and for the killed run to answer past it (step 5), then kill without warning
        deadline = time.monotonic() + 120
        while '"step":5,' not in samples_file.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (project / "models/adapter").exists()
    (run_dir,) = run_dirs(project)
    sealed = [c.step for c in checkpoints.complete(run_dir)]
    assert 4 in sealed and len(sealed) <= 2
    before = [json.loads(line)["step"] for line in samples_file.read_text().splitlines()]
    assert max(before) > 4, "the killed run answered past its checkpoint"
    with open(samples_file, "a") as fh:
        fh.write(f'{{"step": {max(before) + 1}, "prompt": "Top')  # a line the kill cut short
    (project / "dvclive/metrics.json").write_text('{"step": ')  # as if the kill landed mid-write of dvclive's summary

    capsys.readouterr()
    train.run(load_params(project / "params.yaml"))  # the same `tenny train`, in this process
    at = max(sealed)
    assert f"resuming from step {at}" in capsys.readouterr().out
    status = json.loads((project / "dvclive/run.json").read_text())
    assert status["status"] == "finished" and status["resumed_from_step"] == at and status["step"] == 9
    steps = [int(r.split("\t")[0]) for r in (project / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 10)), "the plot has each step once, killed run and resumed run together"
    answered = [json.loads(line)["step"] for line in samples_file.read_text().splitlines()]
    assert answered == list(range(1, 10)), "each step answered once, killed run and resumed run together"
    after_resume = lora_weights(project / "models/adapter")
    assert json.loads((project / "models/adapter/training.json").read_text())["resumed_from_step"] == at
    assert run_dirs(project) == [], "the finished run's checkpoints are gone"

    capsys.readouterr()
    train.run(load_params(project / "params.yaml"))  # the same identity again: a finished run is no resume point
    assert "resuming" not in capsys.readouterr().out
    assert json.loads((project / "models/adapter/training.json").read_text())["resumed_from_step"] is None
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
    (run_dir,) = run_dirs(project)
    (ckpt,) = checkpoints.complete(run_dir)
    assert 0 < ckpt.step < 400
    assert json.loads((project / "dvclive/run.json").read_text())["status"] == "interrupted"


def identity_of(root, p, processes=1, cache_file=None) -> run_identity.RunIdentity:
    init = root / p.train.init_adapter if p.train.init_adapter else None
    return run_identity.identify(p.train.model_dump(mode="json"), [root / paths.TRAIN, root / paths.VAL],
                                 root / paths.BASE_DIR, init, processes, cache_file)


def test_a_second_signal_during_the_save_lets_the_checkpoint_finish(project, capsys, monkeypatch):
    real_seal = checkpoints.mark_complete

    def seal_interrupted(folder, info):  # Ctrl-C again while the checkpoint is being written
        signal.raise_signal(signal.SIGINT)
        real_seal(folder, info)

    sigterm_during_step(monkeypatch, 2)
    monkeypatch.setattr(checkpoints, "mark_complete", seal_interrupted)
    assert train_here(project, max_steps=4, save_every=10) == 128 + signal.SIGTERM
    assert "SIGINT: stopping as soon as the checkpoint being saved is complete" in capsys.readouterr().out
    (run_dir,) = run_dirs(project)
    assert [c.step for c in checkpoints.complete(run_dir)] == [2]


def test_checkpoints_of_another_identity_are_ignored_naming_what_differs(project, capsys, monkeypatch):
    with monkeypatch.context() as m:
        sigterm_during_step(m, 2)
        assert train_here(project, max_steps=4, save_every=10) == 128 + signal.SIGTERM
    (stopped,) = run_dirs(project)
    assert [c.step for c in checkpoints.complete(stopped)] == [2]

    # Other data (one sample more) and other params: two other runs, each told apart by name.
    with open(project / "data/final/train.jsonl", "a") as fh:
        fh.write(json.dumps(make_record(text="One sample more: printers sense fear.")) + "\n")
    capsys.readouterr()
    train_here(project, max_steps=1, lr=0.02)
    out = capsys.readouterr().out
    # (", code" too when the tree's code changed in between: a shared working tree)
    assert re.search(rf"ignoring checkpoints of another run in {re.escape(str(stopped.relative_to(project)))}/ "
                     r"\(step 2\): its params(, data and code| and data) differ", out), out
    assert "resuming" not in out
    assert json.loads((project / "models/adapter/training.json").read_text())["resumed_from_step"] is None
    assert run_dirs(project) == [stopped], "the finished run is gone, the stopped one is left as it was"


def test_the_identity_covers_code_base_init_adapter_and_processes(project, tmp_path, monkeypatch):
    import os

    from pipeline.engines import code_closure

    p = load_params(project / "params.yaml")
    mine = identity_of(project, p)
    assert identity_of(project, p) == mine, "the same inputs, the same identity"
    assert run_identity.difference_note(mine, identity_of(project, p, processes=2).parts) == \
        "its processes (2 vs 1) differs"
    # Bookkeeping knobs are no part of it; a knob that moves weights is.
    later = load_params(project / "params.yaml", ["train.save_every=7", "train.keep_checkpoints=5", "train.resume=never"])
    assert identity_of(project, later) == mine
    assert identity_of(project, load_params(project / "params.yaml", ["train.seed=1"])).differs(mine.parts) == ["params"]
    # One byte of the base's weights; through the digest cache a run start keeps (a base of an hour ago).
    hour_ago = os.stat(project / paths.TRAIN).st_mtime_ns - 3600 * 10**9
    for f in [*(project / paths.BASE_DIR).iterdir(), project / paths.TRAIN, project / paths.VAL]:
        os.utime(f, ns=(hour_ago, hour_ago))
    cache, reads = tmp_path / "hashes.json", []
    real_digest = run_identity.file_digest
    monkeypatch.setattr(run_identity, "file_digest", lambda f: reads.append(f.name) or real_digest(f))
    assert identity_of(project, p, cache_file=cache) == mine and reads
    reads.clear()
    assert identity_of(project, p, cache_file=cache) == mine and reads == [], "the second start reads nothing"
    weights = next(f for f in (project / paths.BASE_DIR).iterdir() if f.suffix == ".safetensors")
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert identity_of(project, p, cache_file=cache).differs(mine.parts) == ["base"]
    assert reads == [weights.name], "only the changed file is read again"
    weights.write_bytes(original)
    # The adapter a run continues from.
    train_here(project, max_steps=1)
    cont = load_params(project / "params.yaml", ["train.init_adapter=models/adapter"])
    assert "init_adapter" in identity_of(project, cont).differs(mine.parts)
    # A one-line change to any module the train stage imports: a copy of the code, packing.py changed.
    code = tmp_path / "code"
    for pkg in ("pipeline", "tui"):
        shutil.copytree(code_closure.CODE_ROOT / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_closure.code_digests(run_identity.TRAIN_MODULE, code)
    assert "pipeline/engines/packing.py" in before and "pipeline/stages/train.py" in before
    with open(code / "pipeline/engines/packing.py", "a") as fh:
        fh.write("# one line\n")
    after = code_closure.code_digests(run_identity.TRAIN_MODULE, code)
    assert [f for f in before if before[f] != after[f]] == ["pipeline/engines/packing.py"]
    assert "pipeline/commands/diff.py" not in before, "code the stage never imports is no part of it"


def test_an_incomplete_checkpoint_is_never_resumed(project, capsys, monkeypatch):
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        train_here(project, max_steps=5, save_every=1, keep_checkpoints=3)
    (run_dir,) = run_dirs(project)
    newest = run_dir / "checkpoint-3"
    (newest / checkpoints.MARKER).unlink()  # as if killed mid-save
    (newest / "adapter_model.safetensors").write_bytes(b"half")
    assert [c.step for c in checkpoints.complete(run_dir)] == [1, 2]
    capsys.readouterr()
    train_here(project, max_steps=5, save_every=1, keep_checkpoints=3)
    assert "resuming from step 2" in capsys.readouterr().out


def test_a_named_checkpoint_resumes_its_own_run_only(project, capsys, monkeypatch):
    with monkeypatch.context() as m:
        sigterm_during_step(m, 1)
        train_here(project, max_steps=3, save_every=1)
    (run_dir,) = run_dirs(project)
    ckpt = checkpoints.complete(run_dir)[-1]
    p = load_params(project / "params.yaml", [f"train.resume={ckpt.path}", "train.lora.r=4"])
    with pytest.raises(UserError, match=r"checkpoint-1: a checkpoint of another run \(its params (differs|and code differ)\); refused.*"
                                        r"train\.init_adapter"):
        train.resume_point(p.train, project / "x", identity_of(project, p))
    p = load_params(project / "params.yaml", [f"train.resume={project}"])
    with pytest.raises(UserError, match="not a complete tenny checkpoint"):
        train.resume_point(p.train, project / "x", identity_of(project, p))
    capsys.readouterr()
    train_here(project, max_steps=3, save_every=1, resume=str(ckpt.path))  # its own run: taken
    assert "resuming from step 1" in capsys.readouterr().out


# ---------------------------------------------------------------- schedule


def test_warmup_takes_its_ratio_of_the_steps_then_decays_linearly(project):
    """train.warmup_ratio means the same steps on every transformers version pyproject allows
    (4.x reads a float warmup_steps as a step count, 5.x below 1 as a ratio): the stage passes an int."""
    assert train.warmup_steps(0.05, 84) == 5 and train.warmup_steps(0.0, 84) == 0 and train.warmup_steps(0.2, 10) == 2
    p = load_params(project / "params.yaml", ["train.max_steps=84", "train.warmup_ratio=0.05"])
    given = train.training_arguments(p.train, project / "out", "cpu", evaluate=False).warmup_steps
    assert given == 5 and isinstance(given, int), "a step count, never the ratio itself"
    train_here(project, max_steps=10, warmup_ratio=0.2, lr=0.01, lr_scheduler="linear", eval_every=100)
    rows = (project / "dvclive/plots/metrics/train/lr.tsv").read_text().splitlines()[1:]
    logged = {int(step): float(lr) for step, lr in (r.split("\t") for r in rows)}
    # Logged at each step: the rate that step took, by hand: 2 warmup steps rising from 0 (k = steps
    # taken before), the peak at the third, then linearly down towards 0 at step 10.
    by_hand = {k + 1: 0.01 * k / 2 if k < 2 else 0.01 * (10 - k) / (10 - 2) for k in range(10)}
    assert logged == pytest.approx(by_hand, abs=1e-9)


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


def loss_rows(root) -> list[tuple[int, float]]:
    lines = (root / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return [(int(step), float(loss)) for step, loss in (line.split("\t") for line in lines)]


@pytest.mark.slow
def test_two_processes_stop_together_on_one_signal_and_resume_to_the_one_process_adapter(project):
    """DDP over 2 CPU processes (gloo) at one process's global batch. SIGTERM to ONE rank: both stop
    after the same step, with one complete checkpoint (both ranks' RNG states in it), and exit.
    The resumed run follows one process's loss curve, each step once, and ends at its adapter;
    only the main process reports and writes."""
    import psutil

    steps = 8
    common = dict(max_steps=steps, packing=False, save_every=1000, log_every=1, lora={"target_modules": [], "dropout": 0.0})
    train_here(project, batch_size=4, **common)
    curve_one = loss_rows(project)
    adapter_one = lora_weights(project / "models/adapter")
    shutil.rmtree(project / "dvclive")

    write_params(project, batch_size=2, **common)
    # accelerate 1.x runs `--cpu --num_processes 2` as ONE process; --multi_gpu launches N
    # processes through torchrun, which on a machine without a GPU train on the CPU over gloo.
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", str(BIN / "tenny"), "train"]
    env = {**env_with_bin(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(launch, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while "loss=" not in proc.stderr.read(64):  # the main process's bar: step 1 is done
            assert proc.poll() is None, proc.stderr.read()[-3000:]
        workers = {p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "tenny" in " ".join(p.cmdline()) and p.environ().get("RANK") is not None}
        # Hold rank 0 so the run cannot end before rank 1 has its signal; rank 1 waits for it in the
        # next collective, then takes SIGTERM. Rank 0 never receives one.
        workers["0"].suspend()
        workers["1"].send_signal(signal.SIGTERM)
        workers["0"].resume()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "the launcher reports the interrupted run"
    assert out.count("SIGTERM: saving a checkpoint after this step") == 1, out + err[-3000:]
    (run_dir,) = run_dirs(project)
    (ckpt,) = checkpoints.complete(run_dir)
    assert ckpt.step < steps, "the signal to one rank stopped both before the run's end"
    assert sorted(f.name for f in ckpt.path.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert f"stopped at step {ckpt.step}" in out
    assert not psutil.pid_exists(workers["0"].pid) or workers["0"].status() == psutil.STATUS_ZOMBIE
    assert json.loads((project / "dvclive/run.json").read_text())["status"] == "interrupted"

    two = subprocess.run(launch, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count(f"resuming from step {ckpt.step}") == 1 and "ignoring" not in two.stdout
    assert two.stdout.count(f"train: {steps} steps") == 1, "one process reports and writes"
    assert "2 processes" in two.stdout
    curve_two = loss_rows(project)
    assert [s for s, _ in curve_two] == [s for s, _ in curve_one] == list(range(1, steps + 1))
    assert [loss for _, loss in curve_two] == pytest.approx([loss for _, loss in curve_one], abs=1e-4)
    adapter_two = lora_weights(project / "models/adapter")
    worst = max(float((adapter_two[k] - adapter_one[k]).abs().max()) for k in adapter_one)
    assert worst <= 1e-4, f"stopped and resumed on 2 processes, the adapter differs from 1 process by {worst}"
    info = json.loads((project / "models/adapter/training.json").read_text())
    assert info["processes"] == 2 and info["run_identity"]["parts"]["processes"] == 2
    assert run_dirs(project) == []


# ---------------------------------------------------------------- bad input


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(project, capsys, monkeypatch):
    import resource

    train_here(project, max_steps=1)  # an adapter a failed run must leave alone
    adapter_before = lora_weights(project / "models/adapter")
    with monkeypatch.context() as m:  # a run stopped after its checkpoint at step 2
        sigterm_during_step(m, 2)
        train_here(project, max_steps=3, save_every=1, keep_checkpoints=3)
    (run_dir,) = run_dirs(project)

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
