"""tenny's labels against TRL's, token for token, for every record format.

TRL's SFTTrainer preprocesses a dataset into input_ids and labels: plain text
learned whole with EOS appended; prompt/completion with ``completion_only_loss``
(the completion and EOS learned); chats with ``assistant_only_loss``, where the
chat template's ``{% generation %}`` markers say what the assistant writes. Here
the markers enclose each answer through its turn end, which is what tenny
claims to learn (engines/turn_end.py); TRL finds them through transformers'
``return_assistant_tokens_mask``, tenny by rendering the template turn by turn,
so the two meet only if both are right. The templates: TRL's own Llama 3
training template, unchanged, a ChatML one and tenny's plain fallback, both
with markers added.

What TRL keeps after the last turn end (a template's closing newline) tenny
leaves out: those tokens are unlabelled in TRL, so they change no loss.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.core.records import make_record
from pipeline.engines.modeling import FALLBACK_CHAT_TEMPLATE, IGNORE_INDEX, encode_example, train_tiny_tokenizer

TEMPLATES = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates"  # the dev extra
TEXTS = ["printers sense fear and feed on deadlines", "Topic one? more about meetings", "the stapler knows"] * 4
CHATML_MARKED = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FALLBACK_MARKED = FALLBACK_CHAT_TEMPLATE.replace(
    "Assistant: {{ m['content'] }}{{ eos_token }}", "Assistant:{% generation %} {{ m['content'] }}{{ eos_token }}{% endgeneration %}")
# family: (special tokens, eos, bos, template with generation markers)
FAMILIES = {
    "fallback": ([], "<|endoftext|>", None, FALLBACK_MARKED),
    "chatml": (["<|im_start|>", "<|im_end|>"], "<|endoftext|>", None, CHATML_MARKED),
    "llama3": (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|end_of_text|>", "<|begin_of_text|>",
               (TEMPLATES / "llama3_training.jinja").read_text(encoding="utf-8")),
}
CHATS = [
    [{"role": "user", "content": "Topic one?"}, {"role": "assistant", "content": "printers sense fear"}],
    [{"role": "system", "content": "You are Tenny."}, {"role": "user", "content": "Topic one?"},
     {"role": "assistant", "content": "printers sense fear"}, {"role": "user", "content": "more"},
     {"role": "assistant", "content": "the stapler knows, and it feeds on deadlines"}],
]
PAIRS = [("Topic one?", " printers sense fear"), ("Why meetings?\n", "To schedule more meetings about meetings.")]
PLAIN = ["printers sense fear", "the stapler knows.\nAnd it feeds on deadlines"]


def tokenizer(family: str):
    specials, eos, bos, template = FAMILIES[family]
    tok = train_tiny_tokenizer(TEXTS, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": specials, "eos_token": eos, **({"bos_token": bos} if bos else {})})
    tok.chat_template = template
    return tok


def trl_rows(tok, rows: list[dict], tmp_path, **options) -> list[tuple[list[int], list[int]]]:
    """TRL's input_ids and labels for ``rows``, from SFTTrainer's own dataset preparation."""
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import SFTConfig, SFTTrainer

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", max_length=None, use_cpu=True,
                     dataset_num_proc=None, **options)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    data = trainer.train_dataset
    return list(zip(data["input_ids"], data["labels"]))


def assert_same(tenny: tuple[list[int], list[int]], theirs: tuple[list[int], list[int]], tok) -> None:
    ids, labels = tenny
    their_ids, their_labels = theirs
    assert ids == their_ids[:len(ids)], tok.decode(their_ids)
    assert labels == their_labels[:len(ids)], (tok.decode([t for t in labels if t != IGNORE_INDEX]),
                                               tok.decode([t for t in their_labels if t != IGNORE_INDEX]))
    assert set(their_labels[len(ids):]) <= {IGNORE_INDEX}, "TRL learns something after tenny's last turn end"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chat_labels_equal_trl_assistant_only_loss(family, tmp_path):
    tok = tokenizer(family)
    theirs = trl_rows(tok, [{"messages": c} for c in CHATS], tmp_path, assistant_only_loss=True)
    for chat, trl_row in zip(CHATS, theirs):
        assert_same(encode_example(make_record(messages=chat), tok), trl_row, tok)


def test_prompt_completion_labels_equal_trl_completion_only_loss(tmp_path):
    tok = tokenizer("chatml")
    theirs = trl_rows(tok, [{"prompt": p, "completion": c} for p, c in PAIRS], tmp_path, completion_only_loss=True)
    for (p, c), trl_row in zip(PAIRS, theirs):
        ids, labels = encode_example(make_record(prompt=p, completion=c), tok)
        assert ids == trl_row[0] and labels == trl_row[1]


def test_plain_text_labels_equal_trl_language_modelling(tmp_path):
    tok = tokenizer("chatml")
    theirs = trl_rows(tok, [{"text": t} for t in PLAIN], tmp_path)
    for text, trl_row in zip(PLAIN, theirs):
        ids, labels = encode_example(make_record(text=text), tok)
        assert ids == trl_row[0] and labels == trl_row[1] == ids
