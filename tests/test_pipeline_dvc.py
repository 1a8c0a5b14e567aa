"""The whole pipeline under real git and real DVC, on tiny data and the tiny model.

What a new user relies on: `dvc repro` produces a dataset, an adapter and an
eval report; a second `dvc repro` does nothing; a teammate's fresh clone after
`dvc pull` is up to date; `dvc exp run -S` re-runs only what the changed param
feeds; a code change the train stage depends on trains anew; metrics and plots
are visible to DVC.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest
import yaml
from conftest import REPO, env_with_bin

from pipeline.core.records import read_records

pytestmark = pytest.mark.slow

WORDS = ("meeting email startup coffee printer password deadline update chatbot commute office "
         "budget synergy roadmap pivot invoice inbox calendar ticket sprint manager vendor app "
         "cloud badge lanyard elevator parking laptop charger").split()


def seed_transcript() -> str:
    """60 distinct nonsense one-liners (far apart for fuzz.ratio), pasted with quirks, plus a near-twin."""
    rng = random.Random(7)
    samples = [" ".join(rng.choice(WORDS) for _ in range(9)).capitalize() + "." for _ in range(60)]
    lines = ["You said: give me cynical one-liners", "ChatGPT said:", "Sure! Here are 60 of them:"]
    lines += [f"{i}. {t}" for i, t in enumerate(samples, start=1)]
    lines += ["- " + samples[0].upper(), "Let me know if you want more!"]  # a near-twin: case only
    return "\n".join(lines) + "\n"


def sh(cmd: list[str], cwd, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env_with_bin(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "data" / "seed").mkdir(parents=True)
    for folder in ("prompts", "docs"):  # synthesize depends on them (provider openai)
        shutil.copytree(REPO / "data" / folder, root / "data" / folder)
    (root / "data" / "reviews").mkdir()
    (root / "data" / "reviews" / "decisions.jsonl").write_text("")
    (root / "data" / "seed" / "office.md").write_text(seed_transcript())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["build"]["val_fraction"] = 0.25
    # Two epochs (13 steps) still take val perplexity from ~502 to ~466; samples while training are
    # off (test_train_samples covers them): each of the four trainings here costs ~5 s of CPU less.
    params["train"].update(base_model="tiny", epochs=2, batch_size=8, lr=0.003, eval_every=5, sample_every=-1,
                           lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": []})
    params["eval"].update(max_new_tokens=8, prompts=["Give me a cynical take on printers."])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        sh(cmd, root)
    first = sh(["dvc", "repro"], root)
    return root, first


def test_repro_produces_dataset_adapter_and_report(repo):
    root, first = repo
    for stage in ("synthesize", "dedupe", "base", "build", "train", "eval", "export"):
        assert f"Running stage '{stage}'" in first.stdout
    train = list(read_records(root / "data/final/train.jsonl"))
    val = list(read_records(root / "data/final/val.jsonl"))
    assert len(train) + len(val) == 60  # 61 samples pasted, one a near-twin
    assert train[0]["messages"][0] == {"role": "system", "content": "You are Tenny."}
    dedupe = json.loads((root / "reports/dedupe.json").read_text())
    assert dedupe["dropped"] == 1 and dedupe["kept"] == 60
    assert (root / "models/adapter/adapter_config.json").exists()
    report = json.loads((root / "reports/eval.json").read_text())
    assert report["adapter"]["perplexity"] < report["base"]["perplexity"]
    gens = [json.loads(l) for l in (root / "reports/generations.jsonl").read_text().splitlines()]
    # The configured prompt, then eval.sample_val held-out prompts from the val split with their references.
    assert gens[0]["prompt"] == "Give me a cynical take on printers." and set(gens[0]) == {"prompt", "base", "adapter"}
    val_prompts = {r["messages"][-2]["content"] for r in val}
    assert len(gens) == 1 + min(len(val), yaml.safe_load((root / "params.yaml").read_text())["eval"]["sample_val"])
    assert all(g["prompt"] in val_prompts and "reference" in g for g in gens[1:])
    lock = (root / "dvc.lock").read_text()
    assert "models/adapter" in lock and "OPENAI" not in lock
    assert (root / "models/merged/model.safetensors").exists() and (root / "models/merged/Modelfile").exists()


def test_second_repro_does_nothing(repo):
    root, _ = repo
    again = sh(["dvc", "repro"], root)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout.lower()
    status = sh(["dvc", "status", "--json"], root)
    assert json.loads(status.stdout) == {}


def test_judge_off_leaves_no_empty_output_warning(repo):
    root, first = repo  # params.yaml sets no eval.judge.model: the judge is off
    assert "judgments.jsonl' is empty" not in first.stdout + first.stderr
    assert [json.loads(x)["kind"] for x in (root / "reports/judgments.jsonl").read_text().splitlines()] == ["off"]


def commit(root, message: str) -> None:
    sh(["git", "add", "-A"], root)
    sh(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", message], root)


def test_a_fresh_clone_after_dvc_pull_is_up_to_date(repo, tmp_path):
    """Checkpoints are a run's scratch outside DVC: a clone that pulls every output has nothing to re-run."""
    root, _ = repo
    sh(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], root)
    commit(root, "a reproduced pipeline")
    sh(["dvc", "push"], root)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    sh(["dvc", "pull"], clone)
    assert json.loads(sh(["dvc", "status", "--json"], clone).stdout) == {}
    again = sh(["dvc", "repro"], clone)
    assert "Running stage" not in again.stdout
    adapter = "models/adapter/adapter_model.safetensors"
    assert (clone / adapter).read_bytes() == (root / adapter).read_bytes()


def test_metrics_and_plots_visible_to_dvc(repo):
    root, _ = repo
    metrics = json.loads(sh(["dvc", "metrics", "show", "--json"], root).stdout)
    flat = json.dumps(metrics)
    for key in ("perplexity", "kept", "over_max_seq_len", "samples"):
        assert key in flat
    plots = sh(["dvc", "plots", "show", "--json"], root).stdout
    assert "token_lengths.csv" in plots and "dvclive/plots/metrics" in plots


def test_exp_run_with_set_reruns_only_downstream(repo):
    root, _ = repo
    commit(root, "v1")
    exp = sh(["dvc", "exp", "run", "-S", "train.lora.r=4"], root)
    assert "Running stage 'train'" in exp.stdout and "Running stage 'eval'" in exp.stdout
    assert "Running stage 'synthesize'" not in exp.stdout and "Running stage 'build'" not in exp.stdout
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], root).stdout)
    assert "train.lora.r" in json.dumps(shown) or '"r": 4' in json.dumps(shown)


def trained_anew(root) -> dict:
    """training.json of the run that just ended, checked to have taken every step from the start."""
    info = json.loads((root / "models/adapter/training.json").read_text())
    status = json.loads((root / "dvclive/run.json").read_text())
    assert info["resumed_from_step"] is None and info["steps"] == status["total_steps"] > 1
    steps = [int(r.split("\t")[0]) for r in (root / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, info["steps"] + 1))
    return info


def test_a_code_change_and_a_forced_rerun_train_every_step_again(repo):
    """A finished run is never a resume point: new code (or --force) trains from step 0."""
    root, _ = repo
    with open(root / "pipeline/engines/packing.py", "a") as fh:
        fh.write("# a one-line change to a module the train stage imports\n")
    changed = sh(["dvc", "repro", "train"], root)
    assert "Running stage 'train'" in changed.stdout and "resuming" not in changed.stdout
    trained_anew(root)
    forced = sh(["dvc", "repro", "--force", "--single-item", "train"], root)
    assert "Running stage 'train'" in forced.stdout and "resuming" not in forced.stdout
    trained_anew(root)
    assert not list((root / ".tenny/checkpoints").glob("run-*")), "finished runs leave no checkpoints"
