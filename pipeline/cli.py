"""The ``tenny`` command: ``tenny`` opens the app; ``tenny <stage>`` runs one stage.

Each stage module exposes ``add_arguments(parser)`` (optional) and
``run(params, args)``. dvc.yaml calls ``tenny <stage>``, so a stage run from a
shell, from DVC and from the TUI is the same code with the same params.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.core.errors import UserError
from pipeline.core.text import clean
from pipeline.core.startup import ML_COMMANDS, preload_ml_stack

# command → module; each module holds one stage or one tool. A command that opens a
# screen points at its entry in tui/commands/: the app stands above pipeline/, so
# pipeline/ never imports it, and this table is the one place that names it.
COMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": ("pipeline.stages.synthesize", "make raw samples (import, dataset or openai)"),
    "dedupe": ("pipeline.stages.dedupe", "drop near-duplicates (fuzz.ratio >= threshold)"),
    "build": ("pipeline.stages.build", "apply review decisions; split and format train/val"),
    "base": ("pipeline.stages.base", "resolve train.base_model into a loadable folder"),
    "train": ("pipeline.stages.train", "LoRA / QLoRA fine-tune"),
    "eval": ("pipeline.stages.eval", "perplexity and generations: base vs adapter"),
    "export": ("pipeline.stages.export", "merge the adapter into the base: models/merged/ + Ollama Modelfile"),
    "review": ("tui.commands.review", "review samples in the terminal"),
    "diff": ("pipeline.commands.diff", "record-level diff of a records file between two revisions"),
    "judge": ("pipeline.commands.judge", "a judge model compares the adapter answers of two revisions"),
    "train-watch": ("tui.commands.train_watch", "follow a training run live"),
    "params": ("pipeline.commands.params", "print params with defaults filled in"),
    "chat": ("tui.commands.chat", "talk to the base model and the adapter side by side"),
    "llama-cpp": ("pipeline.commands.llama_cpp", "find llama.cpp, or fetch and build it once (for export.gguf)"),
}
APP = "tui.app"  # `tenny` with no command: its run_app opens the whole app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tenny",
        description="Persona prompt → reviewed, versioned dataset → LoRA adapter. With no command, opens the app.",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param by dotted key, as in `dvc exp run -S` (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # --set is accepted after the command too (tenny train --set train.lora.r=16).
        p.add_argument("--set", dest="overrides_after", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param by dotted key (repeatable)")
        p.set_defaults(module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + list(getattr(args, "overrides_after", []) or [])
    prog = f"tenny {args.command}" if args.command else "tenny"
    try:
        from pipeline.core.params import load_params

        params = load_params(args.params, overrides)
        if args.command is None:
            return importlib.import_module(APP).run_app(params, args) or 0
        if args.command in ML_COMMANDS:
            preload_ml_stack()
        module = importlib.import_module(args.module)
        return module.run(params, args) or 0
    except UserError as err:
        print(f"{prog}: error: {clean(str(err))}", file=sys.stderr)  # errors quote ids and file text
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
