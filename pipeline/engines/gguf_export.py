"""models/gguf/: the merged model as GGUF files, each run in llama.cpp before it ships.

Called by the export stage once models/merged/ is written. Everything is made
in a folder beside models/gguf/ and swapped in whole: a kill, a full disk or a
failed check leaves the previous models/gguf/ as it was. reports/export.json
keeps, per file, what llama.cpp made of it (docs/export.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.records import write_json
from pipeline.engines import gguf_check, gguf_files, llama_cpp
from pipeline.engines.modeling import replace_dir


@dataclass
class GGUFJob:
    types: list[str]
    adapter: bool
    llama_cpp: str | None
    check_tokens: int
    name: str  # the run's name: files are <name>-<type>.gguf
    merged_dir: Path
    adapter_dir: Path
    prompts: list[str]
    rendered: list[str]
    end_ids: list[int]
    turn_end: str
    modelfile: Callable[[str], str] | None  # "./file.gguf" -> Modelfile text; None: no Modelfile


OFF_NOTE = """# GGUF files

None were asked for: `export.gguf` is `[]` in params.yaml. To get files for
llama.cpp, LM Studio and Ollama, set it and rerun the export stage, e.g.

    tenny export --set 'export.gguf=[f16,q8_0,q4_k_m]'

(the first time, tenny builds llama.cpp; see docs/export.md).
"""


def _architecture(merged_dir: Path) -> str:
    config = json.loads((merged_dir / "config.json").read_text())
    return (config.get("architectures") or [config.get("model_type", "?")])[0]


def write(job: GGUFJob, model, tok) -> dict:
    """Make, check and swap in models/gguf/; returns the report (also written to reports/export.json)."""
    report: dict = {"name": job.name, "check_tokens": job.check_tokens, "prompts": len(job.prompts),
                    "files": {}, "adapter": None, "skipped": None}
    if not job.types and not job.adapter:
        with replace_dir(paths.GGUF_DIR, prefix=".gguf.") as tmp:
            # files of an earlier setting must go; a note instead of an empty folder, which DVC warns about
            (tmp / "README.md").write_text(OFF_NOTE, encoding="utf-8")
        write_json(paths.EXPORT_REPORT, report)
        return report

    llama = llama_cpp.ensure(job.llama_cpp)
    report["llama_cpp"] = llama.origin
    failures: list[str] = []
    with replace_dir(paths.GGUF_DIR, prefix=".gguf.") as tmp:
        if job.types:
            made = _make_files(job, llama, tmp, report)
            if made:
                _check_files(job, llama, made, model, tok, report, failures)
                if job.modelfile is not None:
                    (tmp / "Modelfile").write_text(job.modelfile(f"./{made[0].path.name}"), encoding="utf-8")
        if job.adapter:
            out = tmp / gguf_files.file_name(job.name, "lora-f16")
            try:
                done = gguf_files.convert_adapter(llama, job.adapter_dir, job.merged_dir, out)
                report["adapter"] = {"file": out.name, "bytes": out.stat().st_size, "seconds": round(done.seconds, 2)}
                print(f"export: LoRA adapter → {paths.GGUF_DIR / out.name} ({done.seconds:.1f} s)")
            except gguf_files.ConversionError as err:
                print(f"export: warning: no LoRA GGUF: {err}", file=sys.stderr)
                report["adapter"] = {"error": str(err)}
        report["failed"] = failures
        write_json(paths.EXPORT_REPORT, report)
        if failures:
            raise UserError(failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
                            + f"; {paths.GGUF_DIR}/ was left as it was")
    return report


def _make_files(job: GGUFJob, llama: llama_cpp.LlamaCpp, tmp: Path, report: dict) -> list[gguf_files.Made]:
    """f16 by the converter (the source of every quantized type), then the rest; [] if llama.cpp refuses the model."""
    f16 = tmp / gguf_files.file_name(job.name, "f16")
    try:
        first = gguf_files.convert(llama, job.merged_dir, f16, "f16")
    except gguf_files.ConversionError as err:
        arch = _architecture(job.merged_dir)
        line = f"llama.cpp cannot convert {arch} ({err})"
        print(f"export: warning: no GGUF files: {line}; {paths.MERGED_DIR}/ is written", file=sys.stderr)
        report["skipped"] = line
        return []
    marked = gguf_files.mark_turn_end(llama, f16, job.turn_end)
    meta = gguf_files.metadata(f16)
    report["metadata"] = {k: meta[k] for k in ("architecture", "bos", "eos", "eot", "pre_tokenizer")}
    report["metadata"]["turn_end"] = job.turn_end
    report["metadata"]["turn_end_added"] = marked
    made: list[gguf_files.Made] = []
    for gguf_type in job.types:
        out = tmp / gguf_files.file_name(job.name, gguf_type)
        if gguf_type == "f16":
            done = first
        elif gguf_type in gguf_files.CONVERTER_TYPES:
            done = gguf_files.convert(llama, job.merged_dir, out, gguf_type)
            gguf_files.mark_turn_end(llama, out, job.turn_end)
        else:
            done = gguf_files.quantize(llama, f16, out, gguf_type)
        made.append(done)
        print(f"export: {gguf_type} → {paths.GGUF_DIR / out.name} ({out.stat().st_size / 2**20:.1f} MiB, "
              f"{done.seconds:.1f} s)")
    if "f16" not in job.types:
        f16.unlink()
    return made


def _check_files(job: GGUFJob, llama, made, model, tok, report: dict, failures: list[str]) -> None:
    """Each file greedily on the eval prompts in llama.cpp, against the merged model in transformers."""
    from pipeline.engines.llama_server import serve

    if not job.prompts:
        print("export: warning: no eval prompts (eval.prompts, data/final/val.jsonl): GGUF files not checked",
              file=sys.stderr)
        return
    print(f"export: checking {len(made)} GGUF file(s) in llama.cpp on {len(job.prompts)} eval prompts "
          f"({job.check_tokens} greedy tokens each) ...")
    ref = gguf_check.reference_answers(model, tok, job.prompts, job.rendered, job.check_tokens, job.end_ids)
    report["merged"] = {"tokens_per_s": round(ref.tokens_per_s, 1),
                        "stopped": sum(a.stopped for a in ref.answers)}
    for done in made:
        with serve(llama, done.path) as server:
            eog = set(job.end_ids)
            figures = gguf_check.check_file(server, model, tok, ref, job.check_tokens, eog)
        figures = {"type": done.gguf_type, "seconds": round(done.seconds, 2), **figures}
        report["files"][done.path.name] = figures
        shown = paths.GGUF_DIR / done.path.name
        print(f"export: {done.path.name}: {figures['identical']:.0%} answers as merged, stops {figures['stopped']}/"
              f"{figures['prompts']}, {figures['tokens_per_s']} tokens/s in llama.cpp")
        why = gguf_check.failure(shown, done.gguf_type, figures)
        if why:
            failures.append(why)
