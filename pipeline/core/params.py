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
    concurrency: int = Field(16, ge=1, le=1024)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout; a timed-out request is retried")
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
    include: Literal["accepted", "not_rejected"] = "not_rejected"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 42
    format: Literal["text", "chat"] = "chat"
    system_prompt: str = ""
    user_template: str = Field(
        "Say something about {topic}.",
        description="the user turn for text records in chat format; {fields} come from meta, {topic} falls back to default_topic",
    )
    default_topic: str = "anything"
    max_seq_len: int = Field(256, ge=8)
    histogram_bins: int = Field(20, ge=1)


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
    save_every: int = Field(50, ge=1, description="optimizer steps between checkpoints in models/checkpoints/")
    keep_checkpoints: int = Field(2, ge=1, description="newest complete checkpoints kept per run")
    resume: str = Field(
        "auto", min_length=1,
        description="auto: continue from the newest complete checkpoint of the same run (params and data); "
                    "never: start fresh; or a checkpoint folder (models/checkpoints/run-.../checkpoint-N)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 leaves torch's default")

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
    concurrency: int = Field(8, ge=1, le=1024)
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout; a timed-out request is retried")
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
