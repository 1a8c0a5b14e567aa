"""The training monitor and `tenny train-watch`, fed by dvclive folders written while they watch."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.core import run_status as rs
from pipeline.core.run_status import RunStatus
from pipeline.engines.train_progress import ProgressReader, summary_line

pytestmark = pytest.mark.timeout(120)


def write_run(d: Path, **fields) -> None:
    """run.json the way the train stage writes it: temp file + rename."""
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".run.json.tmp"
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, d / "run.json")


def write_plot(d: Path, name: str, text: str, mode: str = "w") -> None:
    """A dvclive series file, plots/metrics/<name>.tsv, written or appended to as it is."""
    path = d / "plots/metrics" / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as fh:
        fh.write(text)


def train_like(d: Path, steps: int, *, total: int | None = None, pause: float = 0.0, finish: bool = True,
               started: threading.Event | None = None) -> None:
    """What the train stage writes, through its own writers: dvclive's Live under run_status's
    metric names, and run_status.RunStatus for run.json (a rename there breaks these tests)."""
    from dvclive import Live

    total = total or steps
    status = RunStatus(d / rs.RUN_JSON, total_steps=total, device="cpu", quantization="none", base_model="tiny", eta_s=None)
    with Live(dir=str(d), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        for step in range(steps):
            live.log_metric(rs.TRAIN_LOSS, 3.0 / (step + 1))
            live.log_metric(rs.LEARNING_RATE, 1e-3)
            live.log_metric(rs.TOKENS_PER_S, 1000.0 + step)
            live.log_metric(rs.EPOCH, (step + 1) / total)
            live.log_metric(rs.STEP_TIME, 0.1)
            if step % 2 == 1:
                live.log_metric(rs.EVAL_LOSS, 4.0 / (step + 1))
            live.next_step()
            status.update(step=step + 1, eta_s=(total - step - 1) * 0.1,
                          last_checkpoint=f"models/checkpoints/run-x/checkpoint-{step + 1}" if step % 2 else None)
            if started is not None:
                started.set()
            time.sleep(pause)
    if finish:
        status.update(status="finished", step=steps, eta_s=0, last_checkpoint="models/adapter")


def test_reader_follows_a_live_run(tmp_path):
    d = tmp_path / "dvclive"
    reader = ProgressReader(d)
    assert reader.poll().status == "waiting"
    started = threading.Event()
    t = threading.Thread(target=train_like, args=(d, 12), kwargs={"pause": 0.05, "started": started})
    t.start()
    started.wait(10)
    seen_steps = []
    while t.is_alive():
        p = reader.poll()
        if p.step is not None:
            seen_steps.append(p.step)
        time.sleep(0.02)
    t.join()
    p = reader.poll()
    assert p.status == "finished" and p.step == 12 and p.total_steps == 12
    assert len(set(seen_steps)) > 1, "the watcher saw the run progress, not just its end"
    assert [s for s, _ in p.series[rs.TRAIN_LOSS]] == list(range(12))
    assert p.series[rs.EVAL_LOSS][-1] == (11, pytest.approx(4.0 / 12))
    assert p.value(rs.LEARNING_RATE) == pytest.approx(1e-3)
    assert p.epoch == pytest.approx(1.0)
    assert p.last_checkpoint == "models/adapter"
    assert "finished" in summary_line(p)


def test_half_written_files_are_tolerated(tmp_path):
    d = tmp_path / "dvclive"
    train_like(d, 3, total=10, finish=False)
    reader = ProgressReader(d)
    good = reader.poll()
    assert good.step == 3
    # A TSV line caught mid-write, and JSON files cut in the middle.
    write_plot(d, rs.TRAIN_LOSS, "3\t0.7", "a")
    (d / "metrics.json").write_text('{"train": {"loss": 0.')
    (d / "run.json").write_text('{"status": "runn')
    p = reader.poll()
    assert [s for s, _ in p.series[rs.TRAIN_LOSS]] == [0, 1, 2]  # the partial line waits
    assert p.step == 3 and p.status in ("running", "stale")  # the last good run.json is kept
    assert any("run.json" in x for x in p.problems) and any("metrics.json" in x for x in p.problems)
    write_plot(d, rs.TRAIN_LOSS, "5\n", "a")
    assert reader.poll().series[rs.TRAIN_LOSS][-1] == (3, pytest.approx(0.75))


def test_fresh_reader_on_garbage_and_a_new_run(tmp_path):
    d = tmp_path / "dvclive"
    write_plot(d, rs.TRAIN_LOSS, "step\tloss\nnot-a-number\tx\n1\t0.5\n")
    (d / "run.json").write_text("{")
    reader = ProgressReader(d)
    p = reader.poll()
    assert p.series[rs.TRAIN_LOSS] == [(1, 0.5)] and p.problems
    # A new run replaces the folder: the old series is forgotten, not mixed in.
    import shutil

    shutil.rmtree(d)
    train_like(d, 2)
    p = reader.poll()
    assert [s for s, _ in p.series[rs.TRAIN_LOSS]] == [0, 1] and p.status == "finished"


def test_plots_caught_before_their_first_row(tmp_path):
    # The moment dvclive has created a TSV (header only, or nothing yet) and no JSON file.
    d = tmp_path / "dvclive"
    write_plot(d, rs.TRAIN_LOSS, "step\tloss\n")
    write_plot(d, rs.LEARNING_RATE, "")
    reader = ProgressReader(d)
    p = reader.poll()
    assert p.step is None and p.series[rs.TRAIN_LOSS] == [] and p.problems == []
    assert "step" not in summary_line(p)
    write_plot(d, rs.TRAIN_LOSS, "0\t2.5\n", "a")
    assert reader.poll().step == 0


def test_stale_run_is_flagged(tmp_path):
    d = tmp_path / "dvclive"
    write_run(d, status="running", step=5, total_steps=10, updated_at=time.time() - 3600)
    assert ProgressReader(d).poll().status == "stale"


def test_cli_once_and_follow(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--params", "none.yaml", "train-watch", "--once"]) == 0
    assert "no training output yet" in capsys.readouterr().out
    d = tmp_path / "dvclive"
    t = threading.Thread(target=train_like, args=(d, 6), kwargs={"pause": 0.1})
    t.start()
    try:
        assert cli.main(["--params", "none.yaml", "train-watch", "--follow", "--interval", "0.05"]) == 0
    finally:
        t.join()
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("finished") and "step 6/6" in out[-1]
    assert len(out) >= 2
    write_run(d, status="failed", step=1, total_steps=6)
    assert cli.main(["--params", "none.yaml", "train-watch", "--once", "--dir", str(d)]) == 1
    (tmp_path / "file").write_text("x")
    assert cli.main(["--params", "none.yaml", "train-watch", "--once", "--dir", str(tmp_path / "file")]) == 2
    assert "not a dvclive folder" in capsys.readouterr().err


async def test_monitor_screen_follows_a_run_without_gpu(tmp_path, monkeypatch):
    """The app watching while a run writes; NVML absent → 'no GPU'."""
    import pynvml

    from pipeline.engines.train_progress import Nvml
    from tui.app import TrainWatchApp

    def no_nvml():
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    d = tmp_path / "dvclive"
    app = TrainWatchApp(d, interval=0.05, nvml=Nvml())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        screen = app.screen
        header = str(screen.query_one("#train-header").render())
        assert "no training output yet" in header
        t = threading.Thread(target=train_like, args=(d, 8), kwargs={"pause": 0.05})
        t.start()
        while t.is_alive():
            await pilot.pause(0.05)
        t.join()
        for _ in range(40):
            await pilot.pause(0.05)
            if screen.progress and screen.progress.status == "finished":
                break
        p = screen.progress
        assert p.status == "finished" and p.step == 8
        assert "FINISHED" in str(screen.query_one("#train-header").render())
        assert "no GPU" in str(screen.query_one("#gpu-panel").render())
        stats = str(screen.query_one("#train-stats").render())
        assert "tokens / s" in stats and "1,007" in stats
        bar = screen.query_one("#train-progress")
        assert bar.total == 8 and bar.progress == 8
        chart = screen.query_one("#loss-chart")
        assert chart._shown and chart._shown[0][1] == 8


async def test_monitor_screen_on_plots_before_their_first_row(tmp_path):
    from tui.app import TrainWatchApp

    d = tmp_path / "dvclive"
    write_plot(d, rs.TRAIN_LOSS, "step\tloss\n")
    app = TrainWatchApp(d, interval=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(20):
            await pilot.pause(0.05)
            if app.screen.progress:
                break
        assert app.screen.progress.series == {rs.TRAIN_LOSS: []}
        assert "step —" in str(app.screen.query_one("#train-header").render())
        assert app.screen.query_one("#loss-chart")._shown[0][1] == 0


def test_nvml_reading_never_raises(monkeypatch):
    import pynvml

    from pipeline.engines.train_progress import Nvml
    from tui.widgets.gpu_panel import render_gpus

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)
    stats, message = Nvml().read()
    assert stats == [] and "no GPU" in message
    assert "no GPU" in render_gpus(stats, message).plain


@pytest.mark.timeout(300)
def test_watching_a_real_tiny_training_run(in_tmp):
    """The lead's train stage (tiny model, CPU) in a thread; the reader follows it to the end."""
    from pipeline.core.params import load_params
    from pipeline.core.records import make_record, write_records
    from pipeline.stages import base, train

    texts = [f"Sample number {i}: printers sense fear and deadlines sense printers." for i in range(24)]
    write_records(in_tmp / "data/final/train.jsonl", [make_record(text=t) for t in texts[:20]])
    write_records(in_tmp / "data/final/val.jsonl", [make_record(text=t) for t in texts[20:]])
    p = load_params(in_tmp / "params.yaml", ["train.base_model=tiny", "train.max_steps=10", "train.batch_size=4",
                                              "train.eval_every=5", "train.lora.target_modules=[]"])
    base.run(p)
    reader = ProgressReader(in_tmp / "dvclive")
    errors: list[BaseException] = []

    def go():
        try:
            train.run(p)
        except BaseException as err:  # surfaced below
            errors.append(err)

    t = threading.Thread(target=go)
    t.start()
    seen = set()
    while t.is_alive():
        seen.add(reader.poll().step)
        time.sleep(0.01)
    t.join()
    assert not errors, errors
    prog = reader.poll()
    assert prog.status == "finished" and prog.step == prog.total_steps == 10
    assert len(prog.series[rs.TRAIN_LOSS]) == 10 and len(prog.series[rs.EVAL_LOSS]) == 2
    assert prog.device == "cpu" and prog.base_model == "tiny" and prog.last_checkpoint
    assert prog.value(rs.TOKENS_PER_S) > 0
    assert len(seen - {None}) >= 1
    assert "finished · step 10/10" in summary_line(prog)


def test_a_resumed_run_says_from_which_step(tmp_path, capsys):
    """run.json's resumed_from_step reaches train-watch and the Training screen's figures."""
    from tui.screens.train_monitor import render_stats

    d = tmp_path / "dvclive"
    status = RunStatus(d / rs.RUN_JSON, total_steps=90, device="cpu", quantization="none", base_model="tiny", eta_s=None)
    status.update(step=45, resumed_from_step=40, last_checkpoint="models/checkpoints/run-x/checkpoint-40")
    assert cli.main(["--params", "none.yaml", "train-watch", "--once", "--dir", str(d)]) == 0
    assert "resumed from step 40" in capsys.readouterr().out
    p = ProgressReader(d).poll()
    assert p.resumed_from_step == 40
    assert "step 40" in render_stats(p).plain.split("resumed from")[1]


# ---------------------------------------------------------------- answers while it trains


def write_samples(d: Path, rows: list[dict], mode: str = "a", tail: str = "") -> None:
    """dvclive/samples.jsonl as the train stage appends it (engines/train_samples.py): whole lines."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / rs.SAMPLES, mode) as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows) + tail)


def answers(step: int, *texts: str, eos: bool = True) -> list[dict]:
    return [{"step": step, "prompt": f"Prompt {i}?", "answer": t, "eos": eos, "tokens": 5, "repeated_4grams": 0}
            for i, t in enumerate(texts)]


def test_reader_follows_the_answers(tmp_path):
    d = tmp_path / "dvclive"
    reader = ProgressReader(d)
    assert reader.poll().samples == []
    write_samples(d, answers(10, "Beep.", "Boop."), tail='{"step": 20, "prompt": "Pro')  # a line mid-write
    p = reader.poll()
    assert p.sample_steps() == [10] and [r["answer"] for r in p.answers_at(10)] == ["Beep.", "Boop."]
    write_samples(d, [], tail='mpt 0?", "answer": "Printers sense fear.", "eos": true}\n')
    assert reader.poll().sample_steps() == [10, 20]
    # A resumed run rewrites the file without what the killed run wrote past its checkpoint.
    write_samples(d, answers(10, "Beep.", "Boop."), mode="w")
    assert reader.poll().sample_steps() == [10]


def test_cli_prints_the_answers(tmp_path, capsys):
    d = tmp_path / "dvclive"
    assert cli.main(["--params", "none.yaml", "train-watch", "--samples", "--dir", str(d)]) == 0
    assert "no answers yet" in capsys.readouterr().out
    write_samples(d, answers(10, "Beep.\x1b[31m", eos=False) + answers(20, "Printers sense fear."))
    write_run(d, status="finished", step=20, total_steps=20)
    assert cli.main(["--params", "none.yaml", "train-watch", "--samples", "--dir", str(d)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "step 10" and out[2] == "step 20"
    assert "Prompt 0? → Beep." in out[1] and "\x1b" not in out[1] and "no EOS" in out[1]
    assert out[3].strip() == "Prompt 0? → Printers sense fear."


async def test_monitor_steps_through_the_answers(tmp_path):
    from tui.app import TrainWatchApp

    d = tmp_path / "dvclive"
    write_run(d, status="running", step=20, total_steps=40)
    app = TrainWatchApp(d, interval=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        for _ in range(40):
            await pilot.pause(0.05)
            if screen.progress:
                break
        assert screen.check_action("answers", ()) is False, "no answers yet: the key is not offered"
        write_samples(d, answers(10, "Beep.") + answers(20, "Printers sense fear."))
        panel = screen.query_one("#train-samples")
        for _ in range(40):
            await pilot.pause(0.05)
            if panel.steps == [10, 20]:
                break
        assert screen.check_action("answers", ())
        await pilot.press("a")
        assert panel.display and not screen.query_one("#train-main").display
        text = lambda: str(screen.query_one("#samples-text").render())  # noqa: E731
        assert "step 20" in text() and "Printers sense fear." in text()
        await pilot.press("left")
        assert "step 10" in text() and "Beep." in text() and "round 1 of 2" in text()
        write_samples(d, answers(30, "Deadlines sense printers."))
        for _ in range(40):
            await pilot.pause(0.05)
            if 30 in panel.steps:
                break
        assert "step 10" in text(), "a person looking back is not pulled forward"
        await pilot.press("right", "right")
        assert "step 30" in text() and "Deadlines" in text()
        await pilot.press("a")
        assert not panel.display and screen.query_one("#train-main").display


def test_the_kept_step_of_early_stopping_is_shown(tmp_path, capsys):
    from tui.screens.train_monitor import render_header, render_stats

    d = tmp_path / "dvclive"
    write_run(d, status="running", step=30, total_steps=90, best_step=20, best_val_loss=1.5)
    p = ProgressReader(d).poll()
    assert "best so far" in render_stats(p).plain and "step 20" in render_stats(p).plain
    reason = "val loss did not improve by more than 0 for 2 evaluations after step 20: stopped at step 40"
    write_run(d, status="finished", step=40, total_steps=90, kept_step=20, stop_reason=reason)
    p = ProgressReader(d).poll()
    assert "kept step" in render_stats(p).plain and "20 (best val loss)" in render_stats(p).plain
    assert "early stopping: " + reason in render_header(p).plain
    assert cli.main(["--params", "none.yaml", "train-watch", "--once", "--dir", str(d)]) == 0
    assert "kept step 20 (best val loss)" in capsys.readouterr().out
