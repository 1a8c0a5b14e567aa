"""Stage export: the adapter merged into the base, one folder that other tools serve.

Inputs: models/base/, models/adapter/, params ``export``, ``build.format``,
``build.system_prompt``, ``train.base_model``, ``train.quantization``,
``eval.prompts`` (else data/final/val.jsonl's prompts) for the GGUF check.
Output: models/merged/ (written whole or not at all): safetensors weights with
the LoRA merged in, the tokenizer with the chat template and EOS it was trained
with, generation_config.json whose eos ids end a turn where training ended it,
and (``export.ollama``) a Modelfile saying the same in Ollama's terms. The
chat template puts ``build.system_prompt`` first in a chat without a system
turn, as training did.

With ``export.gguf`` (and ``export.gguf_adapter``): models/gguf/, GGUF files
made by llama.cpp's own converter and quantizer, each run in llama.cpp on the
eval prompts against the merged model, with reports/export.json
(engines/gguf_export.py). ``export.gguf: []`` needs no llama.cpp and leaves
only a README in models/gguf/ saying how to ask for files.

The template and the stops are the point: a fine-tune learned one exact prompt
layout and one exact end token. Served with another layout, or without that
token as a stop, it talks past its answer. docs/export.md has the details.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.core.records import read_records
from pipeline.engines import gguf_export, gguf_files
from pipeline.engines.modeling import (
    FALLBACK_CHAT_TEMPLATE,
    chat_text,
    dequantize_to_float32,
    load_base_model,
    load_tokenizer,
    quiet_libraries,
    read_base_info,
    replace_dir,
)
from pipeline.engines.turn_end import TurnEnds

# Ollama's legacy template form: run once per turn with .System/.Prompt/.Response;
# for the turn being answered it stops right after {{ .Response }}.
CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
# Placeholders for rendering a template we do not know: private-use characters no template writes.
_SYSTEM, _USER, _REPLY = "\ue000system\ue000", "\ue000user\ue000", "\ue000reply\ue000"


@dataclass
class ChatFormat:
    """How a prompt is laid out and where an answer ends, in Ollama's terms."""

    kind: str  # fallback | chatml | text | derived | generic
    template: str  # Go template (Ollama's .System / .Prompt / .Response form)
    end_tokens: list[str]  # what ends an assistant turn: generation_config's eos ids
    stops: list[str]  # end_tokens and whatever starts the next turn: Ollama's stop list
    system: str | None = None
    note: str | None = None  # set when the template is a guess the user should check


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _generic(eos: str, system: str | None, note: str) -> ChatFormat:
    return ChatFormat("generic", _fallback_template(eos), [eos], [eos, "\nUser:"], system, note)


def _fallback_template(eos: str) -> str:
    # The model saw "Assistant: text" and is prompted with "Assistant:": the space is the
    # first token it says, so the template must not add one.
    return ("{{ if .System }}{{ .System }}\n\n{{ end }}{{ if .Prompt }}User: {{ .Prompt }}\n{{ end }}"
            "Assistant:{{ .Response }}" + eos + "\n")


def chat_format(tok, params: Params) -> ChatFormat:
    """The prompt layout for Ollama, ending where training ended answers (engines/turn_end.py)."""
    fmt = _layout(tok, params)
    try:
        end = TurnEnds(tok, params.build.stop_token).for_format(params.build.format)
    except UserError:  # no turn end tenny could train with (a template swapped after training): the layout's guess
        return fmt
    fmt.end_tokens = end.stop_tokens
    fmt.stops = _unique(end.stop_tokens + fmt.stops)
    return fmt


def _layout(tok, params: Params) -> ChatFormat:
    """The tokenizer's chat template (and build.format) translated for Ollama."""
    eos = tok.eos_token
    system = params.build.system_prompt or None
    if params.build.format == "text":
        return ChatFormat("text", "{{ .Prompt }}{{ .Response }}", [eos], [eos],
                          note="build.format is text: the model learned raw text, so a prompt goes in as it is")
    template = getattr(tok, "chat_template", None) or ""
    if template == FALLBACK_CHAT_TEMPLATE:
        return ChatFormat("fallback", _fallback_template(eos), [eos], [eos, "\nUser:"], system)
    if "<|im_start|>" in template and "<|im_end|>" in template:
        return ChatFormat("chatml", CHATML_TEMPLATE, _unique(["<|im_end|>", eos]),
                          _unique(["<|im_end|>", eos, "<|im_start|>"]), system or chatml_default_system(tok))
    derived = derived_format(tok, system)
    if derived is not None:
        return derived
    return _generic(eos, system, "the chat template could not be translated; this is a plain User:/Assistant: "
                                 "layout, which the model was NOT trained on: write TEMPLATE by hand")


def chatml_default_system(tok) -> str | None:
    """The system prompt a ChatML template adds when a chat has none (SmolLM2 does).

    Training rendered it into every example without one, so Ollama must send it too.
    """
    text = chat_text(tok, [{"role": "user", "content": _USER}], add_generation_prompt=True)
    found = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n", text, re.DOTALL)
    return found.group(1) if found else None


def derived_format(tok, system: str | None) -> ChatFormat | None:
    """An unknown template rendered with placeholder turns and cut at them.

    Reproduces the single-turn prompt (with and without a system prompt) exactly;
    for longer chats it repeats the whole layout per turn, which may be wrong, so
    the Modelfile says to check it. None when the renders do not cut cleanly.
    """
    import jinja2

    user = [{"role": "user", "content": _USER}]
    try:
        bare = chat_text(tok, user, add_generation_prompt=True)
        full = chat_text(tok, user + [{"role": "assistant", "content": _REPLY}])
        try:
            with_system = chat_text(tok, [{"role": "system", "content": _SYSTEM}] + user, add_generation_prompt=True)
        except jinja2.TemplateError:  # templates that refuse a system turn (Gemma's raise)
            with_system = bare
    except jinja2.TemplateError:
        return None
    if bare.count(_USER) != 1 or with_system.count(_USER) != 1:
        return None
    head, gen = bare.split(_USER)
    system_head, system_gen = with_system.split(_USER)
    if system_gen != gen:
        return None
    # The system block sits between what both heads share (a BOS, say) and the bare head's rest.
    shared = len(os.path.commonprefix([head, system_head]))
    rest = head[shared:]
    if not system_head.endswith(rest):
        return None
    block = system_head[shared:len(system_head) - len(rest)]
    if block and block.count(_SYSTEM) != 1:
        return None
    before_reply, _, end = full.partition(_REPLY)
    if before_reply != bare:
        end = tok.eos_token  # the template renders a finished turn differently: stop at EOS
    template = head[:shared]
    if block:
        template += "{{ if .System }}" + block.replace(_SYSTEM, "{{ .System }}") + "{{ end }}"
    template += rest + "{{ .Prompt }}" + gen + "{{ .Response }}" + end
    ends = _unique([tok.eos_token, end.strip()])
    return ChatFormat("derived", template, ends, ends, system if block else None,
                      note="the chat template is not one tenny knows (fallback, ChatML): TEMPLATE reproduces its "
                           "single-turn prompt, derived by rendering it; check chats of several turns against the model card")


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise UserError(f'{what}: contains """, which a Modelfile cannot quote; remove it or set export.ollama: false')
    if "\n" in value or '"' in value:
        return f'"""{value}"""'
    return f'"{value}"'


def modelfile(fmt: ChatFormat, source: str = ".", folder=paths.MERGED_DIR) -> str:
    """Ollama's recipe: FROM the merged folder (``.``) or a GGUF beside it (``./name.gguf``)."""
    lines = [f"# Written by `tenny export` ({fmt.kind} chat format). Run: ollama create tenny -f {folder}/Modelfile",
             f"FROM {source}"]
    if fmt.note:
        lines.append(f"# tenny: {fmt.note}")
    lines.append(f"TEMPLATE {_quoted(fmt.template, 'the chat template')}")
    if fmt.system:
        lines.append(f"SYSTEM {_quoted(fmt.system, 'build.system_prompt')}")
    lines += [f"PARAMETER stop {_quoted(stop, 'a stop token')}" for stop in fmt.stops]
    return "\n".join(lines) + "\n"


def with_default_system(tok, params: Params) -> str | None:
    """The chat template with ``build.system_prompt`` as the system turn of a chat that has none.

    Training put that system prompt in every example; a runtime that applies the
    exported template (llama-server, vLLM, ``apply_chat_template``) to a chat
    without a system turn must lay it out the same way, not with the base's own
    default ("You are a helpful AI assistant named SmolLM ..."). None when there is
    nothing to change: no system prompt, text format, or a template that refuses
    system turns (the Modelfile's SYSTEM line still carries it there).
    """
    import jinja2

    system = params.build.system_prompt
    template = getattr(tok, "chat_template", None)
    if params.build.format != "chat" or not system or not isinstance(template, str):
        return None
    try:
        chat_text(tok, [{"role": "system", "content": system}, {"role": "user", "content": _USER}], True)
    except jinja2.TemplateError:
        return None
    # A Jinja string literal both jinja2 and llama.cpp's engine read: only \\, ' and newlines escaped.
    literal = "'" + system.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return ("{%- if messages and messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}"
            "{%- endif %}" + template)


def token_ids(tok, tokens: list[str]) -> list[int]:
    """Ids of the strings that are single tokens ("\\nUser:" is not: only Ollama can stop on it)."""
    vocab = tok.get_vocab()
    return [vocab[t] for t in tokens if t in vocab]


# ---------------------------------------------------------------- checks


def _trained_with(adapter) -> dict:
    info = adapter / "training.json"
    return json.loads(info.read_text()) if info.exists() else {}


def check_same_base(base_info: dict, trained: dict, adapter_config: dict, quantization: str) -> None:
    """The adapter fits this base and was trained the way params say, or a UserError saying what to run."""
    current = base_info.get("source_name", base_info["source"])
    trained_on = trained.get("base_model")
    peft_base = adapter_config.get("base_model_name_or_path")
    # A pretrained base is loaded by its name, which peft records; gguf and tiny load from models/base.
    if (trained_on and trained_on != current) or (base_info["kind"] == "pretrained" and peft_base
                                                  and peft_base != base_info["source"]):
        raise UserError(
            f"{paths.ADAPTER_DIR} was trained on {trained_on or peft_base!r}, but {paths.BASE_DIR} holds {current!r}; "
            f"run `dvc repro train` (or `tenny train`) to train on it, or set train.base_model: "
            f"{trained_on or peft_base} and run `tenny base`")
    if trained.get("quantization", quantization) != quantization:
        raise UserError(
            f"{paths.ADAPTER_DIR} was trained with train.quantization: {trained['quantization']}, params say "
            f"{quantization}; set it back or run `dvc repro train` (or `tenny train`)")


# ---------------------------------------------------------------- stage


def run(params: Params, args: Any = None) -> int:
    quiet_libraries()
    import torch
    from peft import PeftModel

    adapter, base_dir, out = paths.ADAPTER_DIR, paths.BASE_DIR, paths.MERGED_DIR
    if not (adapter / "adapter_config.json").exists():
        raise UserError(f"{adapter}: no adapter yet; run `tenny train` (or `dvc repro train`) first")
    base_info = read_base_info(base_dir)
    quantization = params.train.quantization
    check_same_base(base_info, _trained_with(adapter), json.loads((adapter / "adapter_config.json").read_text()),
                    quantization)

    tok = load_tokenizer(base_dir, adapter)
    fmt = chat_format(tok, params)
    print(f"export: merging {adapter}/ into {base_dir}/ ({base_info.get('source_name', base_info['source'])}, "
          f"{quantization}) ...")
    model = load_base_model(base_dir, quantization, "cpu")
    if quantization != "none":
        # The adapter learned to correct the k-bit weights it trained on, so it is merged into
        # those, dequantized to float32 (never into 4-bit weights, never into the originals).
        # Before any forward pass: bitsandbytes' CPU kernel repacks 4-bit weights on first use.
        model = dequantize_to_float32(model)  # from a bfloat16 base too: the merge runs in float32
    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except RuntimeError as err:  # "size mismatch for ...": the base changed shape since training
        first = str(err).strip().splitlines()[-1].strip()
        raise UserError(f"{adapter} does not fit {base_dir} ({first}); the base changed since training: "
                        "run `dvc repro train` (or `tenny base` then `tenny train`)") from None
    merged = model.merge_and_unload()
    merged.to(getattr(torch, params.export.dtype))

    end_ids = token_ids(tok, fmt.end_tokens) or [tok.eos_token_id]
    eos_ids: int | list[int] = end_ids[0] if len(end_ids) == 1 else end_ids
    for config in (merged.config, merged.generation_config):
        config.eos_token_id = eos_ids
        config.pad_token_id = tok.pad_token_id

    template = with_default_system(tok, params)
    if template is not None:
        tok.chat_template = template
    with replace_dir(out, prefix=".merged.") as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _config_for_converters(tmp)
        if params.export.ollama:
            (tmp / "Modelfile").write_text(modelfile(fmt), encoding="utf-8")
    if params.export.ollama and fmt.kind in ("derived", "generic"):
        print(f"export: warning: {fmt.note} ({out}/Modelfile)", file=sys.stderr)
    stops = ", ".join(json.dumps(s) for s in fmt.stops)
    print(f"export: {params.export.dtype} weights, {fmt.kind} chat format, stop {stops} → {out}/")

    # GGUF files from the folder just written (llama.cpp's tools), each checked in llama.cpp.
    prompts = check_prompts(params)
    ep = params.export
    gguf_export.write(gguf_export.GGUFJob(
        types=list(ep.gguf), adapter=ep.gguf_adapter, llama_cpp=ep.llama_cpp, check_tokens=ep.check_tokens,
        name=gguf_files.run_name(base_info.get("source_name", base_info["source"]), adapter), merged_dir=out,
        adapter_dir=adapter, prompts=prompts, rendered=[prompt_text(tok, p, params) for p in prompts],
        end_ids=end_ids, turn_end=fmt.end_tokens[0],
        modelfile=(lambda source: modelfile(fmt, source, paths.GGUF_DIR)) if ep.ollama else None), merged, tok)
    return 0


def _config_for_converters(folder) -> None:
    """config.json keys older readers expect: GPT-2's ``n_ctx``, which transformers 5 no longer writes
    and llama.cpp's converter reads (transformers ignores it)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        config["n_ctx"] = config["n_positions"]
        path.write_text(json.dumps(config, indent=2) + "\n")


def check_prompts(params: Params, limit: int = 5) -> list[str]:
    """The prompts each GGUF is checked on: eval.prompts, else user turns of data/final/val.jsonl."""
    if params.eval.prompts:
        return list(params.eval.prompts)
    if not paths.VAL.exists():
        return []
    found: list[str] = []
    for record in read_records(paths.VAL):
        user = record.get("prompt") or next((m["content"] for m in reversed(record.get("messages", []))
                                             if m["role"] == "user"), None)
        if user:
            found.append(user)
        if len(found) == limit:
            break
    return found


def prompt_text(tok, user: str, params: Params) -> str:
    """A user turn rendered as training rendered its examples (as the eval stage does)."""
    if params.build.format == "chat":
        system = [{"role": "system", "content": params.build.system_prompt}] if params.build.system_prompt else []
        return chat_text(tok, system + [{"role": "user", "content": user}], add_generation_prompt=True)
    return user
