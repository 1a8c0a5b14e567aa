"""One record old → new: the word diff, `tenny diff --show ID`, the app's drill-in from the
dataset diff, and the warning for an output rebuilt outside `dvc repro`."""

from __future__ import annotations

import json
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from test_diff_repo import (  # noqa: E402
    HOSTILE_TEXT,
    V1,
    dvc,
    empty_repo,
    git,
    make_hostile_versions,
    make_two_versions,
)

from pipeline import cli  # noqa: E402
from pipeline.commands.diff import diff_records, record_change, stale_lock_warnings  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.records import make_record  # noqa: E402
from pipeline.engines.word_diff import plain_lines, record_changes, word_diff  # noqa: E402

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------- the word diff


def test_one_changed_word_is_one_delete_and_one_insert():
    ops = word_diff("Airports are where hope goes to wait.", "Airports are where joy goes to wait.")
    assert ops == [("equal", "Airports are where "), ("delete", "hope"), ("insert", "joy"),
                   ("equal", " goes to wait.")]


def test_whitespace_and_punctuation_are_tokens_of_their_own():
    assert word_diff("a  b", "a b") == [("equal", "a"), ("delete", "  "), ("insert", " "), ("equal", "b")]
    assert word_diff("wait.", "wait!") == [("equal", "wait"), ("delete", "."), ("insert", "!")]


def test_neighbouring_word_swaps_read_as_one_phrase():
    assert word_diff("the red big dog", "the small blue dog") == [
        ("equal", "the "), ("delete", "red big"), ("insert", "small blue"), ("equal", " dog")]


@given(st.text(max_size=60), st.text(max_size=60))
def test_the_runs_give_back_both_texts_exactly(old, new):
    ops = word_diff(old, new)
    assert "".join(t for op, t in ops if op != "insert") == old
    assert "".join(t for op, t in ops if op != "delete") == new
    assert all(t for _, t in ops)
    assert all(a[0] != b[0] for a, b in pairwise(ops))  # adjacent runs are merged


def chat(system: str, user: str, assistant: str, **meta) -> dict:
    return make_record(messages=[{"role": "system", "content": system}, {"role": "user", "content": user},
                                 {"role": "assistant", "content": assistant}], meta=meta or None)


def test_chat_parts_come_assistant_first_and_meta_keys_by_name():
    old = chat("You are Tenny.", "Mondays?", "A weekly loop.", source="a.yaml", tags=["x"], model="m")
    new = chat("You are Tenny.", "Mondays?", "A weekly reminder.", source="b.yaml", tags=["x", "y"], model="m")
    change = record_changes(old, new)
    assert [p.label for p in change.parts] == ["assistant", "user", "system"]
    assert [p.changed for p in change.parts] == [True, False, False]
    assert change.status == "edited"
    assert [(m.key, m.old, m.new) for m in change.meta] == [("source", "a.yaml", "b.yaml"), ("tags", ["x"], ["x", "y"])]
    lines = plain_lines(change)
    assert lines[1:] == ["assistant: A weekly [-loop-]{+reminder+}.", "user: unchanged", "system: unchanged",
                         "meta changed: source, tags", "  source: a.yaml → b.yaml", '  tags: ["x"] → ["x", "y"]']


def test_pair_completion_first_and_added_or_removed_records():
    pair = make_record(prompt="Queues?", completion="Where hope waits.")
    assert [p.label for p in record_changes(pair, pair).parts] == ["completion", "prompt"]
    assert record_changes(pair, pair).status == "unchanged"
    added = record_changes(None, pair)
    assert added.status == "added" and added.parts[0].ops() == [("insert", "Where hope waits.")]
    assert record_changes(pair, None).status == "removed"


# ---------------------------------------------------------------- tenny diff --show


@pytest.fixture(scope="module")
def repo(tmp_path_factory, built_once) -> Path:
    return built_once(make_two_versions, tmp_path_factory.mktemp("recdiff") / "r")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, built_once) -> Path:
    """test_diff_repo's hostile versions; the tests using it only read it."""
    return built_once(make_hostile_versions, tmp_path_factory.mktemp("hostile") / "h")


def test_show_prints_the_review_edit_word_by_word(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    rid = V1[4]["id"]  # v2's review log edits it to "an edited take on airports"
    assert cli.main(["diff", "HEAD~1", "HEAD", "--show", rid]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{rid}: edited"
    assert out[1] == "text: [-sample number 4 about-]{+an edited take on+} airports"
    assert out[2:] == []  # meta unchanged: nothing more to say


def test_show_names_changed_meta_keys_and_json_has_the_parts(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    rid = V1[2]["id"]  # v2 adds meta.template
    assert cli.main(["diff", "HEAD~1", "HEAD", "--show", rid]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{rid}: meta changed", "text: unchanged", "meta changed: template", "  template: (none) → changed"]
    assert cli.main(["diff", "HEAD~1", "HEAD", "--show", V1[3]["id"], "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "edited" and data["parts"][0]["ops"][1] == ["delete", " "]


def test_show_of_an_unknown_id_names_it(repo):
    with pytest.raises(UserError, match="no record with id 'nope' at HEAD~1 or at HEAD"):
        record_change(repo, "HEAD~1", "HEAD", "nope")


def test_show_escapes_hostile_text(hostile, capsys, monkeypatch):
    repo = hostile
    monkeypatch.chdir(repo)
    assert cli.main(["diff", "HEAD~1", "HEAD", "--show", "to-edit"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x9b" not in out and "\u200b" not in out
    assert "{+evil \\x1b[2J\\x9b31m" in out and "[bold red]x[/]" in out


# ---------------------------------------------------------------- the app: Enter on a changed record


def screen_text(app) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


async def test_enter_on_a_changed_record_opens_old_to_new_and_escape_comes_back(repo):
    from test_app import wait_for

    from pipeline.core.params import load_params
    from tui.app import TennyApp
    from tui.screens.dataset_diff import DatasetDiffScreen
    from tui.screens.record_diff import DELETED, INSERTED, RecordDiffScreen

    app = TennyApp(repo, load_params(repo / "params.yaml"), start="diff")
    async with app.run_test(size=(80, 24)) as pilot:
        diff = app.screen
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: diff.result is not None, what="the diff")
        table = diff.query_one("#diff-examples")
        wanted = V1[4]["id"]
        row = next(i for i, rid in enumerate(diff.row_ids.values()) if rid == wanted)
        table.focus()
        table.move_cursor(row=row)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RecordDiffScreen) and app.screen.change is not None,
                       what="the record view")
        view = app.screen
        shown = view.query_one("#record-diff").render()
        styled = {str(shown)[s.start:s.end]: str(s.style) for s in shown.spans}
        deleted, inserted = styled["sample number 4 about"], styled["an edited take on"]
        assert "strike" in deleted and "red" in deleted and "red strike" == DELETED
        assert "green" in inserted and "strike" not in inserted and "green" in INSERTED
        assert "an edited take on airports" in screen_text(app).replace("number 4", "")  # drawn at 80x24
        await pilot.press("escape")
        assert isinstance(app.screen, DatasetDiffScreen)
        # q goes back too (inside the app it never quits)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RecordDiffScreen), what="the record view again")
        await pilot.press("q")
        assert isinstance(app.screen, DatasetDiffScreen) and app.is_running


async def test_record_view_draws_hostile_text_as_text(hostile):
    from test_app import raw_controls, wait_for
    from textual.app import App

    from tui.screens.record_diff import RecordDiffScreen

    repo = hostile

    class Host(App):
        def on_mount(self):
            self.push_screen(RecordDiffScreen(repo, "HEAD~1", "HEAD", "data/deduped/samples.jsonl", "to-edit"))

    app = Host()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "second line" in screen_text(app), what="the record view")
        drawn = screen_text(app)
        assert not raw_controls(drawn)
        assert "\\u202eright-to-left" in drawn and "zero\\u200bwidth" in drawn and "red]x[/]" in drawn
        # The newline inside the text is a line break on screen, not an escape.
        assert HOSTILE_TEXT.split("\n")[1] in [line.strip() for line in drawn.splitlines()]


# ---------------------------------------------------------------- same DVC hash, metrics changed


BUILD_PY = """\
import json, pathlib
seed = pathlib.Path("seed.txt").read_text().split()
out = pathlib.Path("data/final"); out.mkdir(parents=True, exist_ok=True)
(out / "train.jsonl").write_text("".join(json.dumps({"id": w, "text": w}) + "\\n" for w in seed))
pathlib.Path("reports").mkdir(exist_ok=True)
json.dump({"records": len(seed)}, open("reports/build.json", "w"))
"""

BUILD_YAML = """\
stages:
  build:
    cmd: python build.py
    deps: [build.py, seed.txt]
    outs: [data/final/train.jsonl]
    metrics:
      - reports/build.json:
          cache: false
"""


@pytest.fixture(scope="module")
def stale_repo(tmp_path_factory, built_once) -> Path:
    """v1 built by dvc repro; v2 rebuilt by running the stage command directly (dvc.lock
    untouched); v3 built by dvc repro again."""
    repo = built_once(empty_repo, tmp_path_factory.mktemp("stale") / "r")
    (repo / "build.py").write_text(BUILD_PY)
    (repo / "dvc.yaml").write_text(BUILD_YAML)
    (repo / "seed.txt").write_text("alpha beta")
    dvc(repo, "repro", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    (repo / "seed.txt").write_text("alpha beta gamma")
    from test_diff_repo import sh

    sh(repo, sys.executable, "build.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v2: built outside dvc repro")
    dvc(repo, "repro", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v3: dvc repro")
    return repo


def test_same_hash_but_changed_metrics_warns_on_stderr(stale_repo, capsys, monkeypatch):
    monkeypatch.chdir(stale_repo)
    assert cli.main(["diff", "HEAD~2", "HEAD~1", "data/final/train.jsonl", "--no-params"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("warning: data/final/train.jsonl has the same DVC hash at HEAD~2 and HEAD~1, but "
                            "reports/build.json changed: an output was rebuilt outside `dvc repro` (dvc.lock not "
                            "updated); run `dvc repro` and commit dvc.lock\n")
    assert "warning" not in captured.out  # stdout stays the diff (and --json stays one document)
    r = diff_records(stale_repo, "HEAD~2", "HEAD~1", "data/final/train.jsonl", with_params=False)
    assert r.added == 0 and len(r.warnings) == 1  # the misleading "no change" the warning is about


def test_a_real_repro_or_an_unchanged_stage_does_not_warn(stale_repo):
    assert stale_lock_warnings(stale_repo, "data/final/train.jsonl", "HEAD~1", "HEAD") == []  # the hash moved
    assert stale_lock_warnings(stale_repo, "data/final/train.jsonl", "HEAD~2", "HEAD") == []
    assert stale_lock_warnings(stale_repo, "data/final/train.jsonl", "HEAD", "HEAD") == []
    r = diff_records(stale_repo, "HEAD~2", "HEAD", "data/final/train.jsonl", with_params=False)
    assert r.added == 1 and r.warnings == []


# ---------------------------------------------------------------- q inside the app goes back


async def test_review_inside_the_app_q_goes_back_and_global_keys_still_work(tmp_path, monkeypatch):
    from test_app import wait_for
    from test_review_support import write_records

    from pipeline.core.params import load_params
    from tui.app import TennyApp
    from tui.review_app import ReviewApp
    from tui.screens.review import ReviewScreen

    monkeypatch.setenv("TENNY_REVIEWER", "ann")
    (tmp_path / ".dvc").mkdir()
    records = tmp_path / "data/deduped/samples.jsonl"
    records.parent.mkdir(parents=True)
    write_records(records, 3)
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"), start="eval")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.ready, what="review")
        await pilot.pause()
        drawn = screen_text(app)
        assert "q Back" in drawn and "q Quit" not in drawn
        await pilot.press("a", "q")
        assert app.is_running and app.current_mode == "eval" and not isinstance(app.screen, ReviewScreen)
        await pilot.press("6")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.ready, what="review again")
        await pilot.press("3")
        assert app.current_mode == "diff" and app.is_running
    assert (tmp_path / "data/reviews/ann.jsonl").read_text().count('"accept"') == 1  # the reviewer's own log

    alone = ReviewApp(records, tmp_path / "d.jsonl")
    async with alone.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: alone.review.ready, what="tenny review")
        await pilot.pause()
        assert "q Quit" in screen_text(alone) and "q Back" not in screen_text(alone)
        await pilot.press("q")
        await pilot.pause()
        assert not alone.is_running
