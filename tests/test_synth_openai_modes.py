"""The five prompt-file modes, and the five shipped examples, through the loopback server."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import Rule, last_user  # noqa: E402
from test_synth_openai import params_for, project, run_stage, server, write_prompt  # noqa: E402,F401

from pipeline.core.errors import UserError  # noqa: E402
from pipeline.engines.synthesis.openai_client import prompt_files  # noqa: E402
from pipeline.engines.synthesis.openai_client.plan import Sampling, plan, planned_count  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


def test_single_mode_prompt_is_the_slots(project, server):
    write_prompt(mode="single", user="Genre: {genre}\nPlace: {place_name}\nWrite the opening line.",
                 grid={"genre": ["noir", "cozy"], "place_name": ["a lighthouse"]})
    server.responder = lambda body: 'Sure! Here is one:\n"The lamp had not turned in thirty years."'
    records, report = run_stage(params_for(server))
    assert [r["prompt"] for r in records] == ["Genre: noir\nPlace name: a lighthouse", "Genre: cozy\nPlace name: a lighthouse"]
    assert records[0]["completion"] == "The lamp had not turned in thirty years."
    assert report["cleaned"] == {"chatter": 2, "quotes": 2}


def test_single_mode_drops_a_cut_off_answer(project, server):
    write_prompt(mode="single", user="Genre: {genre}", grid={"genre": ["noir", "cozy"]})
    server.rules = [Rule("noir", ["length"])]
    server.responder = lambda body: "One sentence.\nAnd another one that goes on."
    records, report = run_stage(params_for(server))
    assert len(records) == 1 and report["dropped"]["truncated"] == 1


def test_pairs_mode_chunks_documents_and_parses_json_lines(project, server):
    Path("docs").mkdir()
    Path("docs/a.md").write_text("Alpha paragraph one.\n\n" + " ".join(f"Beta sentence {i}." for i in range(40)) + "\n\nGamma.\n")
    Path("docs/b.md").write_text("Only one short paragraph here.\n")
    write_prompt(mode="pairs", user="Source {source}\n{chunk}\nWrite {n} pairs, {n_idk} unanswerable.",
                 grid={}, docs="docs/*.md", chunk_chars=300, per_response=5, idk_share=0.4)

    def responder(body):
        text = last_user(body)
        tag = str(abs(hash(text)) % 10**6)
        return "\n".join([
            "```json",
            json.dumps({"prompt": f"What is alpha {tag}?", "completion": "A paragraph."}),
            json.dumps({"question": f"Who wrote it {tag}?", "answer": "I don't know: the text does not say.", "idk": True}),
            '{"prompt": "broken',
            "Here you go!",
            "```",
        ])

    server.responder = responder
    server.keep_bodies = True
    records, report = run_stage(params_for(server))
    sent = [last_user(b) for b in server.stats.bodies]
    assert all("Write 5 pairs, 2 unanswerable." in t for t in sent)
    assert len(sent) == planned_count(prompt_files.load("data/prompts/persona.yaml")) >= 3  # a.md is cut in two or more
    assert all(len(t) < 300 + 80 for t in sent)
    assert len(records) == 2 * len(sent)
    assert {r["meta"]["source"] for r in records} == {"docs/a.md", "docs/b.md"}
    assert [r["meta"]["idk"] for r in records[:2]] == [False, True]
    assert report["dropped"]["invalid_json"] == len(sent) and report["dropped"]["chatter"] == len(sent)
    assert report["cleaned"]["code_fence"] == 2 * len(sent) and report["cleaned"]["pair_keys"] == len(sent)


def test_conversations_mode_makes_messages_records(project, server):
    write_prompt(mode="conversations", user="A chat of {turns} exchanges about {topic}.",
                 grid={"topic": ["kettles", "trains"]}, turns=2, labels={"user": "User", "assistant": "Tenny"},
                 train_system="You are Tenny.")
    server.responder = lambda body: (
        "Here is the conversation:\nUser: My kettle died.\n**Tenny:** Kettles do that.\nIt is their only hobby.\n"
        "User: Can I fix it?\nTenny: Descale it monthly."
    )
    server.rules = [Rule("trains", ["length"])]
    records, report = run_stage(params_for(server))
    assert records[0]["messages"] == [
        {"role": "system", "content": "You are Tenny."},
        {"role": "user", "content": "My kettle died."},
        {"role": "assistant", "content": "Kettles do that.\nIt is their only hobby."},
        {"role": "user", "content": "Can I fix it?"},
        {"role": "assistant", "content": "Descale it monthly."},
    ]
    assert len(records) == 2 and len(records[1]["messages"]) == 3  # the cut answer and its question go
    assert report["dropped"]["chatter"] == 2 and report["dropped"]["truncated"] == 1
    assert report["cleaned"]["trailing_user_turn"] == 1


def test_malformed_conversation_is_dropped_and_counted(project, server):
    write_prompt(mode="conversations", user="A chat about {topic}.", grid={"topic": ["kettles"]})
    server.responder = lambda body: "I'd rather not."
    with pytest.raises(UserError, match="no usable samples"):
        run_stage(params_for(server))


def test_rewrite_mode_keeps_the_shape_and_names_the_source(project, server):
    from pipeline.core.records import make_record, write_records

    sources = [make_record(text="Airports sell time."),
               make_record(prompt="Q?", completion="Old answer."),
               make_record(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Old."}])]
    write_records("in.jsonl", sources)
    write_prompt(mode="rewrite", user="Rewrite {style}: {text}", grid={"style": ["tersely"]}, input="in.jsonl")
    server.responder = lambda body: "NEW " + last_user(body).split(": ", 1)[1]
    records, _ = run_stage(params_for(server))
    assert records[0]["text"] == "NEW Airports sell time."
    assert (records[1]["prompt"], records[1]["completion"]) == ("Q?", "NEW Old answer.")
    assert records[2]["messages"][-1] == {"role": "assistant", "content": "NEW Old."}
    assert [r["meta"]["rewritten_from"] for r in records] == [s["id"] for s in sources]


def test_sample_and_nonce_replay_identically(project):
    write_prompt(grid={"topic": [f"t{i}" for i in range(50)], "mood": ["a", "b", "c"]},
                 user="{n} about {topic} {mood}", sample=7, seed=3, nonce=True, repeat=2)
    pf = prompt_files.load("data/prompts/persona.yaml")
    sampling = Sampling("m", 1.0, 1.0, 10, 0)
    first = [(r.key, r.slots) for r in plan(pf, sampling)]
    assert len(first) == 14 == planned_count(pf) and len({k for k, _ in first}) == 14
    assert first == [(r.key, r.slots) for r in plan(pf, sampling)]
    other = prompt_files.load("data/prompts/persona.yaml").model_copy(update={"seed": 4})
    assert {k for k, _ in first}.isdisjoint({r.key for r in plan(other, sampling)})


# ---------------------------------------------------------------- the shipped examples


def mode_aware(body: dict) -> str:
    text = last_user(body)
    if "JSON object per" in text:
        return '{"prompt": "How long does the K3 take to boil?", "completion": "About four minutes."}\n' \
               '{"prompt": "What colour is the K3?", "completion": "I don\'t know: the text does not say.", "idk": true}'
    if '"User:"' in text:
        return f"User: Help with {len(text)}.\nTenny: Fine. Here is help."
    if text.startswith("Rewrite"):
        return f"A rewritten line number {len(text)}."
    return "\n".join(f"{i}. Line {i} for a prompt of {len(text)} characters." for i in range(1, 4))


@pytest.mark.parametrize("name, mode, kind", [
    ("persona", "lines", "text"), ("single", "single", "prompt"), ("pairs", "pairs", "prompt"),
    ("conversations", "conversations", "messages"), ("rewrite", "rewrite", "text"),
])
def test_shipped_examples_run(project, server, name, mode, kind):
    shutil.copytree(REPO / "data/docs", "data/docs")
    shutil.copy(REPO / f"data/prompts/{name}.yaml", f"data/prompts/{name}.yaml")
    pf = prompt_files.load(f"data/prompts/{name}.yaml")
    assert pf.mode == mode
    server.responder = mode_aware
    records, report = run_stage(params_for(server, prompts=[f"data/prompts/{name}.yaml"]))
    assert report["requests"]["ok"] == planned_count(pf) == server.stats.chat_requests
    assert records and all(kind in r for r in records)
