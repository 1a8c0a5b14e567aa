"""GGUF files made by llama.cpp's own tools from the merged folder (and the adapter).

``convert_hf_to_gguf.py`` writes the f16 (or f32 / bf16) file straight
from models/merged/, carrying the tokenizer, BOS/EOS and the chat template the
folder holds; ``llama-quantize`` makes every quantized type (q8_0 included)
from the f16 file, in a fraction of a second where the converter, a Python
process that imports torch, takes seconds;
``convert_lora_to_gguf.py`` writes the adapter alone. Where the trained turn
end is not the file's EOS (a ChatML fine-tune of a base whose EOS is
``<|endoftext|>``), gguf-py's ``gguf_new_metadata.py`` records it as the
end-of-turn token, so llama.cpp stops where training stopped.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.engines.llama_cpp import LlamaCpp

CONVERTER_TYPES = ("f32", "f16", "bf16")  # float types convert_hf_to_gguf.py writes from the merged folder


class ConversionError(Exception):
    """llama.cpp's converter refused the model; the message is one line for the user."""


@dataclass
class Made:
    gguf_type: str
    path: Path
    seconds: float  # conversion or quantization time


def run_name(base_name: str, adapter_dir: Path) -> str:
    """``<base>-<adapter digest>``: files of different runs never share a name."""
    digest = hashlib.sha256()
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        path = adapter_dir / name
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base_name).name.removesuffix(".gguf")).strip("-.") or "model"
    return f"{base}-{digest.hexdigest()[:8]}"


def file_name(name: str, gguf_type: str) -> str:
    return f"{name}-{gguf_type}.gguf"


def _run(cmd: list[str], llama: LlamaCpp, what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=llama.python_env(), errors="replace")
    if proc.returncode != 0:
        raise ConversionError(f"{what}: {_reason(proc.stdout + proc.stderr)}")
    return proc.stdout + proc.stderr


def _reason(output: str) -> str:
    """The line of a converter's traceback a user can act on."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pattern in (r"Model .* is not supported", r"not supported", r"NotImplementedError: (.*)", r"Error: (.*)",
                    r"error: (.*)"):
        for line in reversed(lines):
            if re.search(pattern, line):
                return line[:400]
    return (lines[-1] if lines else "no output")[:400]


def convert(llama: LlamaCpp, merged: Path, out: Path, outtype: str) -> Made:
    """The merged folder as one GGUF file of ``outtype`` (a converter type)."""
    started = time.monotonic()
    _run([sys.executable, str(llama.convert_hf), str(merged), "--outfile", str(out), "--outtype", outtype],
         llama, f"convert_hf_to_gguf.py could not convert {merged}")
    return Made(outtype, out, time.monotonic() - started)


def quantize(llama: LlamaCpp, source: Path, out: Path, gguf_type: str) -> Made:
    started = time.monotonic()
    _run([str(llama.tool("llama-quantize")), str(source), str(out), gguf_type.upper()], llama,
         f"llama-quantize could not make {gguf_type} from {source.name}")
    return Made(gguf_type, out, time.monotonic() - started)


def convert_adapter(llama: LlamaCpp, adapter: Path, base: Path, out: Path) -> Made:
    """The LoRA alone (f16); ``base`` gives the config it applies to (the merged folder's is the base's)."""
    started = time.monotonic()
    _run([sys.executable, str(llama.convert_lora), str(adapter), "--base", str(base), "--outfile", str(out),
          "--outtype", "f16"], llama, f"convert_lora_to_gguf.py could not convert {adapter}")
    return Made("lora-f16", out, time.monotonic() - started)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9  # gguf.GGUFValueType's numbers, the file format's own


def read_fields(path: Path) -> dict:
    """The file's key/value metadata, read straight from its header.

    gguf-py's GGUFReader builds a numpy view per array element: on a 49k-token
    vocabulary that is 6 s per file, the largest cost of a small model's
    export. Reading the header once with ``struct`` takes a few milliseconds
    and gives the same values (tests/test_gguf.py compares the two).
    """
    import struct

    with open(path, "rb") as f:
        def take(fmt: str):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: GGUF header cut short")
            return struct.unpack(fmt, data)[0]

        def string() -> str:
            size = take("<Q")
            return f.read(size).decode("utf-8", errors="replace")

        def value(kind: int):
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                item, count = take("<I"), take("<Q")
                if item in _SCALARS:
                    fmt = _SCALARS[item]
                    width = struct.calcsize(fmt)
                    data = f.read(width * count)
                    return list(struct.unpack(f"<{count}{fmt[1]}", data))
                return [value(item) for _ in range(count)]
            if kind not in _SCALARS:
                raise ValueError(f"{path}: unknown GGUF value type {kind}")
            return take(_SCALARS[kind])

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = take("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} (this reader knows 2 and 3)")
        take("<Q")  # tensor count
        fields = {}
        for _ in range(take("<Q")):
            key = string()
            fields[key] = value(take("<I"))
        return fields


def metadata(path: Path) -> dict:
    """What a runtime reads from the file: architecture, chat template, BOS/EOS/EOT ids and pieces."""
    fields = read_fields(path)
    tokens = fields.get("tokenizer.ggml.tokens") or []
    info = {"architecture": fields.get("general.architecture"), "chat_template": fields.get("tokenizer.chat_template"),
            "pre_tokenizer": fields.get("tokenizer.ggml.pre"), "add_bos": fields.get("tokenizer.ggml.add_bos_token")}
    for kind in ("bos", "eos", "eot", "padding"):
        token_id = fields.get(f"tokenizer.ggml.{kind}_token_id")
        info[f"{kind}_id"] = token_id
        info[kind] = tokens[token_id] if token_id is not None and token_id < len(tokens) else None
    return info


def mark_turn_end(llama: LlamaCpp, path: Path, turn_end: str) -> bool:
    """Record ``turn_end`` as the file's end-of-turn token unless it already is EOS or EOT; True if changed."""
    meta = metadata(path)
    if turn_end in (meta["eos"], meta["eot"]):
        return False
    script = llama.root / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
    rewritten = path.with_name(path.name + ".eot")
    _run([sys.executable, str(script), str(path), str(rewritten), "--special-token", "eot", turn_end, "--force"],
         llama, f"gguf_new_metadata.py could not set the end-of-turn token of {path.name}")
    rewritten.replace(path)
    return True
