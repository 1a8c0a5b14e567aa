"""Offline eval metrics: each number on hand-made answers with known values, and
the eval stage writing them for base and adapter."""

from __future__ import annotations

import json

import pytest

from pipeline.core.params import load_params
from pipeline.core.records import make_record, write_records
from pipeline.engines.eval_metrics import (
    answer_metrics,
    distinct_n,
    eos_rate,
    is_refusal,
    median_words,
    memorization_rate,
    refusal_rates,
    repeated_ngram_rate,
)
from pipeline.stages import base, train
from pipeline.stages import eval as evaluate


def test_distinct_counts_unique_ngrams_over_all_answers():
    assert distinct_n(["a a b"], 1) == pytest.approx(2 / 3)
    assert distinct_n(["a a b", "a a c"], 2) == pytest.approx(3 / 4)  # (a a) twice, (a b), (a c)
    assert distinct_n(["Hello, hello!"], 1) == 0.5  # case and punctuation do not make a word new
    assert distinct_n(["one"], 2) == 0.0  # no bigram at all


def test_repeated_4gram_rate_counts_answers_that_loop():
    looping = "the printer jams again the printer jams again"
    assert repeated_ngram_rate([looping, "the printer jams again and again"]) == 0.5
    assert repeated_ngram_rate(["a b c a b c"]) == 0.0  # a repeated 3-gram is not a 4-gram loop
    assert repeated_ngram_rate([]) == 0.0


def test_median_words_and_eos_rate():
    assert median_words(["one two", "one two three four", "x"]) == 2
    assert median_words(["I don't know."]) == 3  # "don't" is one word
    # token counts exclude the EOS token: 40 of 40 means cut off by max_new_tokens
    assert eos_rate([3, 40, 40, 39], max_new_tokens=40) == 0.5
    assert eos_rate([], max_new_tokens=40) == 0.0


def test_memorization_flags_copies_not_novel_answers():
    trained = ["Printers sense fear and feed on deadlines.", "Gym memberships are donations to the fit."]
    answers = ["printers sense fear, and feed on deadlines!",  # a copy up to case and punctuation
               "Airports are malls with a runway attached.",  # novel
               ""]  # empty: never a copy
    assert memorization_rate(answers, trained) == pytest.approx(1 / 3)
    assert memorization_rate(answers, []) == 0.0


def test_refusal_patterns():
    for text in ["I don't know.", "I do not know, honestly.", "I don’t know", "That is not in the document.",
                 "I can't say.", "The text doesn't mention it."]:
        assert is_refusal(text), text
    for text in ["Who knows? Printers, probably.", "I know exactly: printers.", "Don't ask me twice."]:
        assert not is_refusal(text), text


def test_refusal_and_false_refusal_rates():
    references = ["I don't know, the document doesn't say.", "Not in the document.",
                  "Printers sense fear.", "Airports are malls."]
    answers = ["I do not know.", "Printers, obviously.",  # refused one of two unknowables
               "I can't say.", "Airports are malls."]  # refused one of two answerables
    assert refusal_rates(references, answers) == {"refusal_rate": 0.5, "false_refusal_rate": 0.5,
                                                  "unanswerable": 2, "answerable": 2}
    assert refusal_rates(["Printers sense fear."], ["I don't know."]) is None  # nothing unknowable to measure


def test_answer_metrics_leaves_refusals_out_without_references():
    got = answer_metrics(["a a b"], [2], 4, ["z"], [None])
    assert got["distinct_1"] == 0.6667 and got["eos_rate"] == 1.0 and "refusal_rate" not in got
    got = answer_metrics(["I don't know", "yes"], [4, 4], 4, [], ["I don't know.", "Yes."])
    assert got["refusal_rate"] == 1.0 and got["false_refusal_rate"] == 0.0 and got["eos_rate"] == 0.0


def test_val_sample_is_stable_when_val_changes():
    val = [make_record(prompt=f"Question {i}?", completion=f"Answer {i}.") for i in range(10)]
    val.append(make_record(text="a text record has no prompt"))
    first = evaluate.sample_val(val, 3)
    assert len(first) == 3 and all(q.startswith("Question") for q, _ in first)
    grown = evaluate.sample_val(val + [make_record(prompt="New?", completion="New.")], 3)
    others = [p for p in grown if p[0] != "New?"]
    assert others == first[:len(others)]  # a newcomer may take a place; it never reshuffles the rest


TRAIN = [f"Sample number {i}: printers sense fear and deadlines sense printers." for i in range(18)]


def final_data(root) -> None:
    train_recs = [make_record(prompt=f"Topic {i}?", completion=t) if i % 2 else make_record(text=t)
                  for i, t in enumerate(TRAIN)]
    val_recs = [make_record(prompt="Topic 100?", completion="I don't know; the notes do not say."),
                make_record(messages=[{"role": "system", "content": "You are Tenny."},
                                      {"role": "user", "content": "Topic 101?"},
                                      {"role": "assistant", "content": "Deadlines sense printers."}]),
                make_record(prompt="Topic 102?", completion="Printers sense fear."),
                make_record(text="Sample number 103: a text has no prompt.")]
    write_records(root / "data/final/train.jsonl", train_recs)
    write_records(root / "data/final/val.jsonl", val_recs)


def test_eval_stage_writes_offline_metrics_for_base_and_adapter(in_tmp):
    final_data(in_tmp)
    p = load_params(in_tmp / "params.yaml", [
        "train.base_model=tiny", "train.max_steps=2", "train.batch_size=4", "train.lora.target_modules=[]",
        "eval.prompts=['Topic one']", "eval.max_new_tokens=4", "eval.sample_val=3"])
    base.run(p)
    train.run(p)
    evaluate.run(p)
    report = json.loads((in_tmp / "reports/eval.json").read_text())
    gens = [json.loads(line) for line in (in_tmp / "reports/generations.jsonl").read_text().splitlines()]
    assert gens[0]["prompt"] == "Topic one" and "reference" not in gens[0]
    val_prompts = {"Topic 100?", "Topic 101?", "Topic 102?"}  # the text record brings no prompt
    assert {g["prompt"] for g in gens[1:]} == val_prompts and all("reference" in g for g in gens[1:])
    assert report["prompts_answered"] == 4
    assert report["train_median_words"] == 10  # every training answer: "Sample number N: ..." is 10 words
    for model in ("base", "adapter"):
        m = report[model]
        for key in ("distinct_1", "distinct_2", "repeated_4gram_rate", "eos_rate", "memorization_rate",
                    "refusal_rate", "false_refusal_rate"):
            assert 0 <= m[key] <= 1, (model, key, m[key])
        answers = [g[model] for g in gens]  # each model is scored on its own answers
        assert m["distinct_1"] == round(distinct_n(answers, 1), 4)
        assert m["median_words"] == median_words(answers)
