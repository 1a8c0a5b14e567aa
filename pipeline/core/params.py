"""params.yaml, validated: every knob of every stage, with its default and its limits.

An unknown key, a typo or a wrong type is an error naming the dotted key and
what is allowed there. ``--set a.b=c`` overrides use the same dotted keys as
``dvc exp run -S a.b=c``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core import paths
from pipeline.core.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ---------------------------------------------------------------- synthesize


class DatasetSource(Strict):
    """An existing dataset file turned into records (provider ``dataset``).

    Each of ``text``/``prompt``/``completion`` is a field name (``quote``) or a
    template over the row's fields (``Quote by {author}: {quote}``).
    """

    path: str = Field(description="a .jsonl, .csv or .parquet file")
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: str | None = Field(None, description="field holding an OpenAI-style messages list")
    meta_fields: list[str] = Field(default_factory=list, description="row fields copied into meta")

    @model_validator(mode="after")
    def one_body(self) -> "DatasetSource":
        bodies = [b for b, on in (("text", self.text), ("prompt/completion", self.prompt or self.completion), ("messages", self.messages)) if on]
        if len(bodies) != 1:
            raise ValueError("map exactly one body: 'text', or 'prompt' + 'completion', or 'messages'")
        if (self.prompt is None) != (self.completion is None):
            raise ValueError("'prompt' and 'completion' are mapped together")
        return self


class Filters(Strict):
    """Rule filters applied to every synthesized sample; drops are counted by rule."""

    min_chars: int = Field(1, ge=0)
    max_chars: int = Field(4000, ge=1)
    require: list[str] = Field(default_factory=list, description="regexes every sample must match")
    ban: list[str] = Field(default_factory=list, description="regexes (case-insensitive) that drop a sample")


class Price(Strict):
    input_per_mtok: float = Field(ge=0, description="USD per million prompt tokens")
    output_per_mtok: float = Field(ge=0, description="USD per million completion tokens")


class SynthesizeParams(Strict):
    provider: Literal["import", "dataset", "openai"] = "import"
    seed_dir: str = str(paths.SEED_DIR)
    dataset: DatasetSource | None = None
    filters: Filters = Field(default_factory=Filters)
    # provider openai
    prompts: list[str] = Field(default_factory=lambda: ["data/prompts/persona.yaml"])
    base_url: str | None = Field(None, description="None: OpenAI; any OpenAI-compatible server by URL")
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini"
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    seed: int | None = 0
    concurrency: int = Field(16, ge=1, le=1024, description="most requests at once (the ceiling of the adaptive limit)")
    adaptive_concurrency: bool = Field(True, description="find the concurrency the server sustains, up to concurrency; "
                                                         "false: always concurrency")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0, description="a request is given up on (and retried) when the server answered "
                                                     "nothing for this long while it waited")
    max_retries: int = Field(6, ge=0, description="retries per request on 429, 5xx, timeouts, dropped connections")
    retry_base_s: float = Field(0.5, gt=0, description="first backoff delay; doubles per retry, with jitter")
    retry_max_s: float = Field(60.0, gt=0, description="longest backoff delay (a longer Retry-After still wins)")
    max_requests: int | None = Field(None, ge=0)
    max_cost_usd: float | None = Field(None, ge=0)
    prices: dict[str, Price] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60),
            "gpt-4o": Price(input_per_mtok=2.50, output_per_mtok=10.0),
        }
    )
    batch: bool = Field(False, description="send through the Batch API (cheaper, up to 24 h); the batch id is kept in .tenny/")
    batch_poll_s: float = Field(30.0, gt=0, description="seconds between batch status checks")
    batch_price_factor: float = Field(0.5, gt=0, le=1, description="batch price as a share of the table price")
    cache: bool = Field(True, description="reuse answers kept in .tenny/ for identical requests (never pay twice)")
    stop_when_novelty_below: float | None = Field(
        None, ge=0, le=1,
        description="provider openai: stop sending once the share of new samples (by dedupe.threshold) over the "
                    "last novelty_window samples falls below this (e.g. 0.2); None: never stop",
    )
    novelty_window: int = Field(500, ge=100, description="how many of the latest samples the novelty share is measured over")


# ---------------------------------------------------------------- dedupe


class DedupeParams(Strict):
    threshold: float = Field(90.0, ge=0, le=100, description="fuzz.ratio score at or above which a later sample is dropped")
    against: list[str] = Field(default_factory=list, description="earlier record files that go first and are never dropped")
    engine: Literal["local", "dask"] = "local"
    workers: int = Field(0, ge=0, description="0: all cores")
    scheduler: str | None = Field(None, description="engine dask: address of a running scheduler (tcp://host:8786); none starts a local cluster")


# ---------------------------------------------------------------- build


class BuildParams(Strict):
    include: Literal["not_rejected", "accepted", "majority", "unanimous", "adjudicated"] = Field(
        "not_rejected", description="how the reviewers' decisions choose what is kept (docs/review.md, build policies)")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 42
    format: Literal["text", "chat"] = "chat"
    system_prompt: str = ""
    user_template: str = Field(
        "Say something about {topic}.",
        description="the user turn for text records in chat format; {fields} come from meta, {topic} falls back to default_topic",
    )
    default_topic: str = "anything"
    stop_token: str | None = Field(
        None, description="the token that ends an answer when the chat template ends turns with none tenny can find "
                          "(docs/training.md, Turn end); None: the template's own turn end (EOS for plain text)")
    histogram_bins: int = Field(20, ge=1)
    judge_above: int | None = Field(None, ge=1, le=10, description="also keep records no person decided whose judge "
                                    "prescore is this or more (data/reviews/prescore.jsonl); None: people only")

    @model_validator(mode="before")
    @classmethod
    def _one_max_seq_len(cls, data: Any) -> Any:
        # build used to warn at a length of its own; the trainer's is the one that cuts.
        if isinstance(data, dict) and "max_seq_len" in data:
            raise ValueError("build.max_seq_len is gone: build warns at train.max_seq_len, the length the trainer "
                             "uses; delete build.max_seq_len and set train.max_seq_len")
        return data


class ReviewParams(Strict):
    """Team review (docs/review.md): data/reviews/<name>.jsonl per reviewer."""

    overlap: int = Field(1, ge=1, description="reviewers who must decide a record before it leaves everyone's queue")
    adjudicators: list[str] = Field(default_factory=list,
                                    description="reviewer names whose decision settles a disagreement (build.include: adjudicated)")
    prescore: bool = Field(False, description="before the review opens, the eval judge scores each sample 1-10 "
                                              "(data/reviews/prescore.jsonl; paid once, resumable)")


# ---------------------------------------------------------------- train


class LoraParams(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class TinyParams(Strict):
    """The ``tiny`` base: a small GPT-2 built from a config, for tests and smoke runs."""

    n_layer: int = Field(2, ge=1)
    n_head: int = Field(2, ge=1)
    n_embd: int = Field(64, ge=8)
    vocab_size: int = Field(512, ge=64)
    n_positions: int = Field(1024, ge=8, description="longest sequence the tiny model takes (train.max_seq_len at most this)")
    seed: int = Field(0, description="seeds the tiny model's random weights")


class EarlyStoppingParams(Strict):
    """Stop when the val loss stops improving; the best checkpoint is what the run keeps (docs/training.md)."""

    metric: Literal["val_loss"] = "val_loss"
    patience: int = Field(3, ge=1, description="evaluations (every train.eval_every steps) without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="an improvement smaller than this does not count")


class TrainParams(Strict):
    base_model: str = Field(
        "smollm2",
        description="smollm2 (the packaged SmolLM2-135M-Instruct), tiny, a Hugging Face name, a local folder or a .gguf file",
    )
    quantization: Literal["none", "4bit", "8bit"] = "none"
    lora: LoraParams = Field(default_factory=LoraParams)
    tiny: TinyParams = Field(default_factory=TinyParams)
    init_adapter: str | None = Field(
        None, description="an adapter folder to continue from (fine-tune a fine-tune); its base must be this base")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(8, ge=1, description="rows per device per step (packed rows hold several samples)")
    grad_accum: int = Field(1, ge=1)
    packing: bool = Field(False, description="pack samples into rows of max_seq_len tokens (no cross-sample attention): "
                                             "less padding when lengths vary; measured slower on short, even persona "
                                             "samples on the CPU (docs/training.md)")
    lr: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw_torch", description="paged_adamw_8bit / adamw_8bit: bitsandbytes' 8-bit AdamW (GPU)")
    max_seq_len: int = Field(128, ge=8)
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, ~30% slower; what QLoRA usually runs with")
    liger_kernel: bool = Field(False, description="Liger's fused kernels (GPU only; pip install liger-kernel): less memory, more tokens/s")
    eval_every: int = Field(20, ge=1, description="optimizer steps between val-loss evaluations")
    save_every: int = Field(50, ge=1, description="optimizer steps between checkpoints in .tenny/checkpoints/")
    keep_checkpoints: int = Field(2, ge=1, description="newest complete checkpoints kept per run")
    resume: str = Field(
        "auto", min_length=1,
        description="auto: continue from the newest complete checkpoint of the same run identity (params, data, "
                    "base, code, init_adapter, processes); never: start fresh; or a checkpoint folder "
                    "(.tenny/checkpoints/run-.../checkpoint-N) of this run identity")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 leaves torch's default")
    # -- watching a run (H26: docs/training.md, "Answers while it trains" and "Overhead")
    sample_every: int = Field(0, ge=-1, description="steps between sample answers on the Training screen "
                                                     "(dvclive/samples.jsonl); 0: about 5 times per run; -1: off")
    sample_prompts: list[str] | None = Field(
        None, description="user turns answered while training; None: 4 val prompts and the first eval prompt")
    sample_max_new_tokens: int = Field(32, ge=1, le=4096, description="longest sample answer, in tokens (greedy): "
                                                                      "32 keeps answers under 5% of a default run")
    early_stopping: EarlyStoppingParams | None = Field(
        None, description="stop when the val loss stops improving and keep its best step; None: off")
    log_every: int = Field(0, ge=0, description="steps between logged figures (loss, tokens/s, run.json); "
                                                "0: 1 on the CPU, 10 on a GPU")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", description="attention kernel; auto: flash_attention_2 on a GPU that has it, else sdpa")
    torch_compile: bool = Field(False, description="torch.compile the model (measured: docs/training.md)")
    dataloader_workers: int = Field(0, ge=0, description="processes that collate batches (0: the training process)")

    @field_validator("sample_prompts")
    @classmethod
    def _sample_prompts_not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not p.strip() for p in v)):
            raise ValueError("an empty list or an empty prompt: leave train.sample_prompts out for the default "
                             "(4 val prompts and the first eval prompt), or set train.sample_every: -1 to turn "
                             "sample answers off")
        return v

    @model_validator(mode="after")
    def _paged_needs_bitsandbytes_gpu(self) -> "TrainParams":
        if self.optimizer in ("adamw_8bit", "paged_adamw_8bit") and self.device == "cpu":
            raise ValueError(f"optimizer {self.optimizer} runs on a GPU only; use adamw_torch on the CPU")
        return self


# ---------------------------------------------------------------- eval


class JudgeParams(Strict):
    """A judge model behind any OpenAI-compatible endpoint: base vs adapter, pairwise (docs/judge.md).

    No ``model``, no judge: the offline default. Requests go through the
    synthesize client (cache in .tenny/, retries, concurrency, budget).
    """

    model: str | None = Field(None, description="judge model (gpt-4o-mini, or the name a local server serves); None: no judge")
    base_url: str | None = Field(None, description="None: OpenAI; any OpenAI-compatible server by URL (vLLM, Ollama, llama.cpp)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable that holds the key (the key itself is never in params)")
    prompt: str = Field(str(paths.JUDGE_PROMPT), description="the judge's instructions: persona, rubric, reply formats")
    persona_score: bool = Field(True, description="also score every answer 1-10 against the rubric")
    temperature: float = Field(0.0, ge=0, le=2, description="0: the same question gets the same verdict")
    max_tokens: int = Field(200, ge=16, description="room for the JSON verdict and its one-sentence reason")
    seed: int | None = 0
    concurrency: int = Field(8, ge=1, le=1024, description="most requests at once (the ceiling of the adaptive limit)")
    adaptive_concurrency: bool = Field(True, description="find the concurrency the server sustains, up to concurrency")
    timeout_s: float = Field(60.0, gt=0, description="a request is given up on (and retried) when the server answered "
                                                     "nothing for this long while it waited")
    max_retries: int = Field(6, ge=0, description="retries per request on 429, 5xx, timeouts, dropped connections")
    retry_base_s: float = Field(0.5, gt=0, description="first backoff delay; doubles per retry, with jitter")
    retry_max_s: float = Field(60.0, gt=0, description="longest backoff delay")
    max_cost_usd: float | None = Field(None, ge=0, description="stop asking before the judge could spend more than this")
    prices: dict[str, Price] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60),
            "gpt-4o": Price(input_per_mtok=2.50, output_per_mtok=10.0),
        },
        description="USD per million tokens by model name (a prefix matches dated names)",
    )
    cache: bool = Field(True, description="reuse verdicts kept in .tenny/ for identical requests (a rerun asks nothing)")


class EvalParams(Strict):
    prompts: list[str] = Field(default_factory=list, description="user turns answered by base and adapter")
    max_new_tokens: int = Field(40, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0, description="> 1 also discourages the end-of-turn token: answers run on")
    no_repeat_ngram_size: int = Field(4, ge=0, description="greedy decoding loops on small models; 0 turns the block off")
    batch_size: int = Field(8, ge=1)
    max_val_samples: int | None = Field(None, ge=1)
    sample_val: int = Field(0, ge=0, description="also answer this many val prompts (drawn by id hash, never train); "
                                                  "their reference answers give the refusal rates")
    judge: JudgeParams = Field(default_factory=JudgeParams, description="a judge model comparing the answers; off by default")


# ---------------------------------------------------------------- export


class ExportParams(Strict):
    """The adapter merged into the base: models/merged/, for Ollama, llama.cpp or vLLM."""

    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype of the saved merged weights (the merge itself runs in float32)")
    ollama: bool = Field(True, description="also write models/merged/Modelfile (chat template, stop tokens, system prompt)")
    gguf: list[str] = Field(default_factory=list, description="GGUF files to write into models/gguf/ with llama.cpp, "
                                                             "e.g. [f16, q8_0, q4_k_m]; [] needs no llama.cpp")
    gguf_adapter: bool = Field(False, description="also write the LoRA alone as a GGUF (llama-server --lora, Ollama ADAPTER)")
    llama_cpp: str | None = Field(None, description="a built llama.cpp folder; unset: $LLAMA_CPP_DIR, else tenny's "
                                                    "build cache (built once when missing)")
    check_tokens: int = Field(32, ge=1, description="greedy tokens per eval prompt when each GGUF is checked in llama.cpp")

    @field_validator("gguf")
    @classmethod
    def _known_gguf_types(cls, v: list[str]) -> list[str]:
        wanted = [t.lower() for t in v]
        unknown = [t for t in wanted if t not in GGUF_TYPES]
        if unknown:
            raise ValueError(f"unknown GGUF type {', '.join(unknown)}; allowed: {', '.join(GGUF_TYPES)}")
        return list(dict.fromkeys(wanted))


# llama.cpp's converter writes f32/f16/bf16; llama-quantize makes the quantized types from f16 (no imatrix needed).
GGUF_TYPES = ("f16", "bf16", "f32", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1", "q4_k_m", "q4_k_s", "q4_0",
              "q4_1", "iq4_nl", "iq4_xs", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")


# ---------------------------------------------------------------- remote


class RemoteParams(Strict):
    """The DVC remote that moves dataset versions and adapters between machines.

    The app writes it into .dvc/config.local (``dvc remote add --local``), so a
    laptop and a GPU box can each point the same name at their own path, and a
    plain ``dvc push`` / ``dvc pull`` from a shell uses it too.
    """

    name: str = Field("storage", pattern=r"^[A-Za-z0-9_.-]+$", description="the remote's name in DVC")
    url: str | None = Field(None, description="a folder, s3://, gs://, ssh://...; None: use the remote DVC already has")


# ---------------------------------------------------------------- root


class Params(Strict):
    synthesize: SynthesizeParams = Field(default_factory=SynthesizeParams)
    dedupe: DedupeParams = Field(default_factory=DedupeParams)
    build: BuildParams = Field(default_factory=BuildParams)
    review: ReviewParams = Field(default_factory=ReviewParams)
    train: TrainParams = Field(default_factory=TrainParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    export: ExportParams = Field(default_factory=ExportParams)
    remote: RemoteParams = Field(default_factory=RemoteParams)

    @field_validator("*", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        # An empty section in YAML ("dedupe:") means "all defaults", not null.
        return {} if value is None else value


# ---------------------------------------------------------------- loading


class ParamsError(UserError):
    pass


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=c`` → ("a.b", c) with c parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.lora.r=16")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # "You are Tenny: dry." parses as a mapping; only explicit {...}/[...] mean one.
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        value = raw
    return key.strip(), value


def apply_override(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}, the dotted keys ``apply_override`` takes; lists stay values."""
    if not isinstance(obj, dict):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def load_params(path: str | Path = paths.PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read, override and validate params; a missing file means all defaults."""
    path = Path(path)
    data: dict = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            # The context mark is where the broken construct starts: the line to fix.
            mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ParamsError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ParamsError(f"{path}: the top level must be a mapping of sections (synthesize, dedupe, build, train, eval, export, remote)")
        data = loaded or {}
    for item in overrides:
        apply_override(data, *parse_override(item))
    return validate(data, source=str(path))


def validate(data: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(format_errors(err, source)) from None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing allowed keys)."""
    model: Any = Params
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int) or True)
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(tuple(loc[:-1]))
            allowed = sorted(owner.model_fields) if owner else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key '{key}'"
            if hint:
                msg += f" (did you mean '{'.'.join(map(str, loc[:-1] + (hint[0],)))}'?)"
            if allowed:
                msg += f"; allowed here: {', '.join(allowed)}"
        else:
            msg = f"{key}: {e['msg']}"
            if "input" in e and e["type"] != "missing":
                got = repr(e["input"])
                msg += f" (got {got[:80] + '...' if len(got) > 80 else got})"
        lines.append(msg)
    return f"{source}: " + "; ".join(lines)
