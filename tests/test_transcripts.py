"""Pasted chat transcripts: the generator's quirks are cleaned and counted, chatter dropped."""

from __future__ import annotations

import json

import pytest

from pipeline.core.errors import UserError
from pipeline.core.params import load_params
from pipeline.core.records import read_records
from pipeline.engines.synthesis.providers.transcripts import clean_line
from pipeline.stages.synthesize import run as synthesize


class Counts(dict):
    def __missing__(self, key):
        return 0


@pytest.mark.parametrize(
    "line, sample, cleaned",
    [
        ("- Meetings are a hostage situation with snacks.", "Meetings are a hostage situation with snacks.", "bullet"),
        ("* Agendas are wishes with bullet points.", "Agendas are wishes with bullet points.", "bullet"),
        ("• Your inbox is a to-do list other people write.", "Your inbox is a to-do list other people write.", "bullet"),
        ("12. Nothing is urgent until it is late.", "Nothing is urgent until it is late.", "numbering"),
        ("3) Every reorg is a rename.", "Every reorg is a rename.", "numbering"),
        ("(4) Synergy is two budgets pretending.", "Synergy is two budgets pretending.", "numbering"),
        ('"Quoted lines lose their quotes."', "Quoted lines lose their quotes.", "quotes"),
        ("“Curly quotes too.”", "Curly quotes too.", "quotes"),
        ("**Bold lines lose their stars.**", "Bold lines lose their stars.", "emphasis"),
        ("   Stray    spaces   vanish.   ", "Stray spaces vanish.", "whitespace"),
    ],
)
def test_quirks_are_cleaned_and_counted(line, sample, cleaned):
    counts = Counts()
    assert clean_line(line, counts) == sample
    assert counts["cleaned", cleaned] >= 1


@pytest.mark.parametrize(
    "line",
    [
        "Sure! Here are 20 more:",
        "Here are 15 cynical one-liners about commuting:",
        "Certainly! Here's another batch:",
        "Let me know if you'd like more!",
        "Want me to make them darker?",
        "I hope these help!",
        "You said: give me 20 more",
        "ChatGPT said:",
        "---",
    ],
)
def test_chatter_is_dropped(line):
    counts = Counts()
    assert clean_line(line, counts) is None
    assert sum(counts.values()) >= 1


@pytest.mark.parametrize(
    "line",
    [
        "Sure, the standup will be quick. It has never been quick.",
        "Here is the thing about open offices: nobody is working.",
        "1.5 million followers and not one friend.",
        '"Unlimited" vacation means "none," but with paperwork.',
    ],
)
def test_real_samples_that_look_like_quirks_survive(line):
    assert clean_line(line, Counts())


def project(tmp_path, monkeypatch, seed: dict[str, str]):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "seed").mkdir(parents=True)
    for name, text in seed.items():
        (tmp_path / "data" / "seed" / name).write_text(text, encoding="utf-8")
    return load_params(tmp_path / "params.yaml")


def test_stage_writes_samples_with_topic_and_report(tmp_path, monkeypatch):
    params = project(tmp_path, monkeypatch, {
        "office-life.md": "Sure! Here are a few:\n1. Printers sense fear.\n2) Printers sense fear.\n\n# commuting\n- Trains run late on purpose.\nHope these help!\n",
    })
    synthesize(params)
    recs = list(read_records("data/raw/samples.jsonl"))
    assert [(r["text"], r["meta"]["topic"], r["meta"]["line"]) for r in recs] == [
        ("Printers sense fear.", "office life", 2),
        ("Trains run late on purpose.", "commuting", 6),
    ]
    report = json.loads((tmp_path / "reports" / "synthesize.json").read_text())
    assert report["samples"] == 2
    assert report["cleaned"]["numbering"] == 2 and report["cleaned"]["bullet"] == 1
    assert report["dropped"]["chatter"] == 2 and report["dropped"]["exact_duplicate"] == 1


def test_empty_seed_dir_says_where_to_paste(tmp_path, monkeypatch):
    params = project(tmp_path, monkeypatch, {})
    with pytest.raises(UserError, match=r"data/seed/ has no \.md or \.txt transcripts: paste samples"):
        synthesize(params)


def test_only_chatter_says_nothing_usable_and_keeps_old_output(tmp_path, monkeypatch, capsys):
    params = project(tmp_path, monkeypatch, {"a.md": "- An old sample that should survive.\n"})
    synthesize(params)
    (tmp_path / "data" / "seed" / "a.md").write_text("Sure! Here are 20 more:\nLet me know if you want more!\n")
    with pytest.raises(UserError, match=r"no usable samples \(dropped: \{'chatter': 2\}\)"):
        synthesize(params)
    assert "a.md: nothing usable found" in capsys.readouterr().err
    # Nothing half-written: the previous output is still there, whole.
    assert [r["text"] for r in read_records("data/raw/samples.jsonl")] == ["An old sample that should survive."]


def test_bad_utf8_transcript_names_line(tmp_path, monkeypatch):
    params = project(tmp_path, monkeypatch, {})
    (tmp_path / "data" / "seed" / "x.txt").write_bytes(b"fine line here\ncaf\xe9 bad\n")
    with pytest.raises(UserError, match=r"x\.txt:2: not valid UTF-8"):
        synthesize(params)


def test_rule_filters_count_drops(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(
        "synthesize:\n  filters:\n    min_chars: 10\n    ban: ['synergy']\n    require: ['[.!?]$']\n")
    params = project(tmp_path, monkeypatch, {"a.md": "- Short.\n- Synergy is a word for layoffs.\n- No final punctuation here\n- This one passes every rule.\n"})
    synthesize(params)
    assert [r["text"] for r in read_records("data/raw/samples.jsonl")] == ["This one passes every rule."]
    dropped = json.loads((tmp_path / "reports" / "synthesize.json").read_text())["dropped"]
    assert dropped == {"filter:min_chars": 1, "filter:ban:synergy": 1, "filter:require:[.!?]$": 1}


@pytest.mark.parametrize(
    "line",
    [
        "Great, another app that wants to be my friend.",
        "Okay, so the meeting is somewhere on the calendar, probably twice.",
        "Enjoy your free trial, the last free thing you will ever touch.",
        "Want more storage? That will be a monthly relationship.",
        "I hope your standup goes well. It will not.",
        "Of course it costs more; it has a subscription now.",
        "Feel free to disagree in the comments, where nobody reads.",
    ],
)
def test_jokes_that_start_like_chatter_survive(line):
    assert clean_line(line, Counts()) == line


@pytest.mark.parametrize(
    "line, sample",
    [
        ("'\"Because you watched\" is the platform's way of holding a grudge.'",
         "\"Because you watched\" is the platform's way of holding a grudge."),
        ("1. **The Commute:** an hour each way to answer email.", "The Commute: an hour each way to answer email."),
        ("**1.** The commute is a podcast with brake lights.", "The commute is a podcast with brake lights."),
    ],
)
def test_markdown_and_apostrophes(line, sample):
    assert clean_line(line, Counts()) == sample


def test_user_message_on_the_line_after_a_bare_label_is_dropped(tmp_path, monkeypatch):
    params = project(tmp_path, monkeypatch, {"a.md": (
        "You said:\ngive me 15 cynical one-liners about meetings\nChatGPT said:\n"
        "1. Meetings are calendars eating themselves.\nCopy\n\nYou said:\n10 more, a bit meaner\n\n"
        "ChatGPT said:\n1. Every agenda is a hostage note.\n")})
    synthesize(params)
    assert [r["text"] for r in read_records("data/raw/samples.jsonl")] == [
        "Meetings are calendars eating themselves.", "Every agenda is a hostage note."]


@pytest.mark.parametrize(
    "line",
    [
        "Want more? I can do a round about road trips next.",
        "Need more? I can also do a set about podcasters.",
        "Feel free to tweak the wording to match your newsletter's voice.",
        "Enjoy! Want me to turn a few of these into tweet-length jokes?",
        "Copy",
    ],
)
def test_offers_and_buttons_are_chatter(line):
    assert clean_line(line, Counts()) is None
