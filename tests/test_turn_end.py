"""One turn end for build, train, eval, chat and export, on four chat families whose EOS is not it.

The tokenizers are built here (a small BPE plus each family's special tokens);
the chat templates are the families' own, as TRL ships them for identity checks
(trl/chat_templates/*.jinja: qwen2_5 for ChatML, llama3, gemma, phi3), so the
turn end is found in templates nobody here wrote. The model is a tiny GPT-2
whose every hidden state is one fixed vector: greedy decoding writes token A,
then (A's logit damped by the repetition penalty) the turn end, then A again
forever unless generation stops at the turn end. Stopping at EOS alone, as eval
and chat used to, runs it to max_new_tokens.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import UserError
from pipeline.core.params import load_params, validate
from pipeline.core.records import make_record, write_records
from pipeline.engines.chat_session import ChatSession, Sampling
from pipeline.engines.modeling import IGNORE_INDEX, TooLong, encode_example, encode_within, train_tiny_tokenizer
from pipeline.engines.turn_end import TurnEnds
from pipeline.stages import base, build, eval as eval_stage, export

TEMPLATES = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates"
TEXTS = ["printers sense fear and feed on deadlines", "Topic one? more about meetings", "the stapler knows"] * 4
# family: (TRL's template file, special tokens, eos, bos, the turn end)
FAMILIES = {
    "chatml": ("qwen2_5", ["<|im_start|>", "<|im_end|>"], "<|endoftext|>", None, "<|im_end|>"),
    "llama3": ("llama3", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|end_of_text|>",
               "<|begin_of_text|>", "<|eot_id|>"),
    "gemma": ("gemma", ["<start_of_turn>", "<end_of_turn>"], "<eos>", "<bos>", "<end_of_turn>"),
    "phi3": ("phi3", ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"], "<|endoftext|>", None, "<|end|>"),
}
# Ends answers with plain text: nothing a model can stop on.
NO_TURN_END = ("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
               "{% if add_generation_prompt %}### assistant:\n{% endif %}")
CHAT = [{"role": "user", "content": "Topic one?"}, {"role": "assistant", "content": "printers sense fear"},
        {"role": "user", "content": "more"}, {"role": "assistant", "content": "the stapler knows"}]


def family_tokenizer(family: str, template: str | None = None):
    file, specials, eos, bos, _ = FAMILIES[family]
    tok = train_tiny_tokenizer(TEXTS, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": specials, "eos_token": eos, **({"bos_token": bos} if bos else {})})
    tok.chat_template = template or (TEMPLATES / f"{file}.jinja").read_text(encoding="utf-8")
    return tok


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, family_tokenizer(request.param)


def learned(ids, labels) -> list[int]:
    return [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]


# ---------------------------------------------------------------- finding it


def test_the_turn_end_is_read_from_the_template_not_eos(family):
    name, tok = family
    end = TurnEnds(tok).chat
    assert end.token == FAMILIES[name][4] != tok.eos_token
    assert end.id == tok.convert_tokens_to_ids(end.token) and end.source == "chat template"
    assert end.stop_ids == [end.id, tok.eos_token_id]  # the turn end first; EOS still stops
    assert TurnEnds(tok).text.token == tok.eos_token  # plain text ends with EOS


# ---------------------------------------------------------------- train


def test_training_learns_every_answer_through_its_turn_end(family):
    name, tok = family
    end = FAMILIES[name][4]
    ids, labels = encode_example(make_record(messages=CHAT), tok)
    # Learned: each answer and its turn end, nothing else (no header, no newline, no trailing EOS).
    assert tok.decode(learned(ids, labels)) == f"printers sense fear{end}the stapler knows{end}"
    assert ids[-1] == labels[-1] == tok.convert_tokens_to_ids(end)
    assert tok.eos_token_id not in learned(ids, labels)
    # Text and prompt/completion samples end with EOS, learned.
    ids, labels = encode_example(make_record(prompt="Topic one?", completion=" printers"), tok)
    assert ids[-1] == labels[-1] == tok.eos_token_id


def test_a_sample_longer_than_max_seq_len_is_left_out_never_cut(family):
    _, tok = family
    records = [make_record(messages=CHAT), make_record(messages=CHAT[:2])]
    full = len(encode_example(records[0], tok)[0])
    short = len(encode_example(records[1], tok)[0])
    kept, too_long = encode_within(records, tok, max_len=full - 1)
    assert [len(i) for i, _ in kept] == [short] and too_long == [(records[0]["id"], full)]
    with pytest.raises(TooLong):
        encode_example(records[0], tok, full - 1)


# ---------------------------------------------------------------- generation: eval and chat


def echo_model(tok, first: int, then: int, then_in_prompt: bool = True):
    """Greedy writes ``first``, then (its logit damped by a 1.5 repetition penalty) ``then``, forever.

    ``then`` is the turn end, which the prompt usually holds already (a user
    turn ends with it), so it starts damped too.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0  # every hidden state is e0: logits are column 0 of the (tied) embeddings
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[first, 0] = 10.0
        model.transformer.wte.weight[then, 0] = 10.5 if then_in_prompt else 9.0  # 7 damped: below 10, above 10/1.5
    return model.eval()


def answer_token(tok, prompt_ids: list[int]) -> int:
    """A plain word piece the prompt does not hold (the repetition penalty would damp it from the start)."""
    return next(i for i in tok("stapler knows", add_special_tokens=False)["input_ids"] if i not in prompt_ids)


def test_eval_answers_stop_at_the_turn_end_for_base_and_adapter_alike(family):
    name, tok = family
    p = validate({"build": {"system_prompt": ""}, "eval": {"repetition_penalty": 1.5, "no_repeat_ngram_size": 0,
                                                           "max_new_tokens": 8}})
    prompt = eval_stage.prompt_text(tok, "Topic one?", p)
    first = answer_token(tok, tok(prompt, add_special_tokens=False)["input_ids"])
    end_id = tok.convert_tokens_to_ids(FAMILIES[name][4])
    model = echo_model(tok, first, end_id, end_id in tok(prompt, add_special_tokens=False)["input_ids"])
    stops = TurnEnds(tok, p.build.stop_token).for_format(p.build.format).stop_ids
    answers, counts = eval_stage.generate(model, tok, [prompt, prompt], p.eval, "cpu", stops)
    assert counts == [1, 1] and answers == [tok.decode([first]).strip()] * 2
    # The fixture is not stopping by itself: at EOS alone it writes past the turn end to the limit.
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    past = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                          repetition_penalty=1.5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert past.shape[1] - ids.shape[1] == 8 and end_id in past[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def llama3_project(tmp_path_factory):
    """A base of the llama3 family on disk (a pointer to a local folder): what `tenny chat` loads."""
    root = tmp_path_factory.mktemp("llama3")
    tok = family_tokenizer("llama3")
    prompt = tok.apply_chat_template([{"role": "system", "content": "You are Tenny."},
                                      {"role": "user", "content": "Topic one?"}], tokenize=False,
                                     add_generation_prompt=True)
    first = answer_token(tok, tok(prompt, add_special_tokens=False)["input_ids"])
    echo_model(tok, first, tok.convert_tokens_to_ids("<|eot_id|>")).save_pretrained(root / "llama3-base")
    tok.save_pretrained(root / "llama3-base")
    (root / "params.yaml").write_text(f"build:\n  system_prompt: You are Tenny.\ntrain:\n  base_model: {root / 'llama3-base'}\n"
                                      "  device: cpu\neval:\n  repetition_penalty: 1.5\n  no_repeat_ngram_size: 0\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        base.run(load_params("params.yaml"))
    return root, tok.decode([first]).strip()


def test_chat_answers_stop_at_the_turn_end(llama3_project):
    root, word = llama3_project
    session = ChatSession(load_params(root / "params.yaml"), root=root, only="base")
    session.load()
    reply = session.reply("base", "Topic one?", Sampling(temperature=0, max_new_tokens=8), threading.Event())
    assert (reply.text, reply.tokens, reply.finish) == (word, 2, "eos")  # the word, then <|eot_id|>


# ---------------------------------------------------------------- export


def modelfile_stops(text: str) -> list[str]:
    return [json.loads(m) for m in re.findall(r'^PARAMETER stop (".*")$', text, re.M)]


def test_the_modelfile_and_generation_config_stop_at_the_turn_end(family, in_tmp):
    name, tok = family
    end = FAMILIES[name][4]
    fmt = export.chat_format(tok, load_params(in_tmp / "params.yaml", ["build.system_prompt=You are Tenny."]))
    stops = modelfile_stops(export.modelfile(fmt))
    assert stops[:2] == [end, tok.eos_token]
    # what export.run writes as generation_config's eos ids
    assert export.token_ids(tok, fmt.end_tokens) == [tok.convert_tokens_to_ids(end), tok.eos_token_id]


# ---------------------------------------------------------------- no turn end: build says what to set


@pytest.fixture
def plain_template_project(in_tmp):
    tok = family_tokenizer("chatml", template=NO_TURN_END)
    tok.save_pretrained(in_tmp / "plain-base")
    write_records("data/deduped/samples.jsonl", [make_record(text=t) for t in TEXTS[:3]])
    (in_tmp / "data/reviews").mkdir(parents=True)
    base.run(load_params("params.yaml", ["train.base_model=plain-base"]))
    return in_tmp, tok


def test_a_template_without_a_turn_end_fails_build_naming_the_setting(plain_template_project):
    _, tok = plain_template_project
    with pytest.raises(UserError, match=r"build\.format: chat: the chat template of .*plain-base ends an assistant "
                                        r"turn with no token a model can stop on \(after an answer it writes "
                                        r"'\\n\\n### user:\\n'\); set build\.stop_token to a token"):
        build.run(load_params("params.yaml", ["train.base_model=plain-base"]))
    assert not Path("data/final/train.jsonl").exists()


def test_build_stop_token_is_written_after_every_answer_and_stops_generation(plain_template_project):
    _, tok = plain_template_project
    p = load_params("params.yaml", ["train.base_model=plain-base", "build.stop_token=<|im_end|>"])
    assert build.run(p) == 0
    ends = TurnEnds(tok, p.build.stop_token)
    assert (ends.chat.token, ends.chat.rendered) == ("<|im_end|>", False)
    ids, labels = encode_example(make_record(messages=CHAT), tok, None, ends)
    assert tok.decode(learned(ids, labels)) == "printers sense fear<|im_end|>the stapler knows<|im_end|>"
    assert ends.for_format("chat").stop_ids == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    with pytest.raises(UserError, match=r"build\.stop_token: '### end' is not one token of .*; choose one of its "
                                        r"special tokens \("):
        TurnEnds(tok, "### end").chat  # noqa: B018


# ---------------------------------------------------------------- one length


def test_build_warns_at_the_trainers_length_and_build_max_seq_len_is_gone(in_tmp):
    write_records("data/deduped/samples.jsonl", [make_record(text=" ".join(["word"] * n)) for n in (5, 50, 60)])
    (in_tmp / "data/reviews").mkdir(parents=True)
    p = load_params("params.yaml", ["train.base_model=tiny", "train.max_seq_len=30", "build.val_fraction=0"])
    base.run(p)
    build.run(p)
    report = json.loads(Path("reports/dataset.json").read_text())
    assert report["max_seq_len"] == 30
    assert report["warnings"]["over_max_seq_len"]["count"] == 2 == report["tokens"]["train"]["over_max_seq_len"]
    with pytest.raises(UserError, match=r"build\.max_seq_len is gone: build warns at train\.max_seq_len"):
        validate({"build": {"max_seq_len": 128}})


def test_train_leaves_long_samples_out_and_counts_them_in_training_json(in_tmp, capsys):
    from pipeline.stages import train

    short = [make_record(messages=[{"role": "user", "content": f"Topic {i}?"},
                                   {"role": "assistant", "content": "printers sense fear"}]) for i in range(6)]
    long = [make_record(text=" ".join(["printers sense fear and deadlines"] * 12) + f" {i}") for i in range(3)]
    write_records("data/final/train.jsonl", short[:4] + long[:2])
    write_records("data/final/val.jsonl", short[4:] + long[2:])
    p = load_params("params.yaml", ["train.base_model=tiny", "train.max_steps=1", "train.batch_size=2",
                                    "train.max_seq_len=40", "train.device=cpu", "train.lora.target_modules=[]",
                                    "train.sample_every=-1"])
    base.run(p)
    assert train.run(p) == 0
    summary = json.loads(Path("models/adapter/training.json").read_text())
    assert summary["over_max_seq_len"]["train"] == 2 and summary["over_max_seq_len"]["val"] == 1
    assert summary["over_max_seq_len"]["max_seq_len"] == 40 and summary["over_max_seq_len"]["longest"] > 40
    assert summary["train_samples"] == 4 and summary["turn_end"] == "<|endoftext|>"
    assert "left out 2 train and 1 val samples longer than train.max_seq_len (40 tokens" in capsys.readouterr().out
    # All too long: nothing to train on is an error that says what to raise.
    with pytest.raises(UserError, match=r"every one longer than train\.max_seq_len \(8 tokens.*raise train\.max_seq_len"):
        train.run(load_params("params.yaml", ["train.base_model=tiny", "train.max_seq_len=8", "train.device=cpu",
                                              "train.sample_every=-1", "train.lora.target_modules=[]"]))
