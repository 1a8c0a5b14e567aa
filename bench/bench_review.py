"""Benchmark the review queue at scale, driving the real app headless.

    .venv/bin/python bench/bench_review.py                  # 1,000,000 samples, empty log
    .venv/bin/python bench/bench_review.py --decided 500000 # resume half-way through a long log
    .venv/bin/python bench/bench_review.py --n 100000 --keys 500

Generates its own records file (and log) in a temp folder, in a child process
so the figures are the app's alone, then prints:

- time to first sample: from before Textual is imported to the first sample
  drawn (the file indexed far enough to know where to resume);
- time to full index: every line indexed (filters, search and bulk need it);
- key-to-screen p50/p95/max over a mix of j, k, a, x, u, space: from the key
  press to the screen updated with the next sample;
- peak memory (max RSS of this process);
- a search miss and a slot filter over the whole file (they run in workers).

With ``--team`` (issue 27) it builds a project instead: the samples, three
reviewers' logs (alice, bob, carol: 300k decisions each, every decided record
decided twice, about one in eight a disagreement), a prescore file scoring
every sample, params with ``review.overlap: 2``, and the tiny base. Then:

- the app as alice (overlap 2, the other two logs followed): first sample,
  key-to-screen over the same key mix;
- agreement (Team.load + pipeline.engines.agreement, as build and the S view
  run it) in a child process: the fold of the logs and the statistics timed apart;
- build (``include: majority``) with the three logs, in a child process: wall
  time and peak RSS.

    .venv/bin/python bench/bench_review.py --team            # 1,000,000 samples, 3 x 300,000 decisions
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the a cynical airport gym fridge coffee queue wifi meeting email phone train delay printer "
         "monday inbox password update reboot calendar lanyard podcast").split()


def generate(path: Path, n: int, decided: int, log: Path) -> None:
    """n text records in tenny's own form, and a log accepting/rejecting the first ``decided``."""
    from pipeline.core.records import dumps, record_id

    rng = random.Random(0)
    topics = WORDS[3:12]
    with open(path, "w", encoding="utf-8") as out, open(log, "w", encoding="utf-8") as dec:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + f" #{i}"
            rid = record_id({"text": text})
            out.write(dumps({"id": rid, "text": text, "meta": {
                "source": "data/prompts/persona.yaml", "template": "take",
                "slots": {"topic": topics[i % len(topics)]}, "model": "gpt-4o-mini", "temperature": 1.0}}))
            out.write("\n")
            if i < decided:
                action = "accept" if i % 5 else "reject"
                dec.write(f'{{"id":"{rid}","action":"{action}","at":"2026-01-01T00:00:00+0000","by":"bench"}}\n')


def generate_team(project: Path, n: int, per_reviewer: int) -> None:
    """A project: samples, three reviewers' logs, a prescore of every sample, params, the tiny base."""
    from pipeline.core.params import load_params
    from pipeline.core.records import dumps, record_id
    from pipeline.engines.prescore_file import row_line
    from pipeline.stages import base

    rng = random.Random(0)
    samples, reviews = project / "data/deduped/samples.jsonl", project / "data/reviews"
    samples.parent.mkdir(parents=True)
    reviews.mkdir(parents=True)
    ids = []
    with open(samples, "w", encoding="utf-8") as out:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + f" #{i}"
            rid = record_id({"text": text})
            ids.append(rid)
            out.write(dumps({"id": rid, "text": text, "meta": {"slots": {"topic": WORDS[3 + i % 9]}}}) + "\n")
    # records [0, 1.5 m) decided twice: alice [0, m), bob [m/2, 1.5 m), carol [0, m/2) + [m, 1.5 m)
    m = per_reviewer
    spans = {"alice": [(0, m)], "bob": [(m // 2, 3 * m // 2)], "carol": [(0, m // 2), (m, 3 * m // 2)]}
    truth = [rng.random() < 0.7 for _ in range(min(n, 3 * m // 2))]
    for name, ranges in spans.items():
        with open(reviews / f"{name}.jsonl", "w", encoding="utf-8") as log:
            for a, b in ranges:
                for i in range(a, min(b, len(truth))):
                    ok = truth[i] != (rng.random() < 0.07)
                    log.write(f'{{"id":"{ids[i]}","action":"{"accept" if ok else "reject"}",'
                              f'"at":"2026-01-01T00:00:00+0000","by":"{name}","did":"{rng.getrandbits(64):016x}"}}\n')
    with open(reviews / "prescore.jsonl", "w", encoding="utf-8") as out:
        for i, rid in enumerate(ids):
            good = truth[i] if i < len(truth) else rng.random() < 0.7
            score = max(1, min(10, round(rng.gauss(7 if good else 4, 2))))
            out.write(row_line(rid, "0123456789ab", score, "fits the persona; dry enough", "judge-model") + "\n")
    (project / "params.yaml").write_text("train:\n  base_model: tiny\nbuild:\n  include: majority\n"
                                         "review:\n  overlap: 2\n")
    os.chdir(project)
    base.run(load_params("params.yaml"))


def team_child(step: str, project: Path) -> dict:
    import contextlib
    import json

    os.chdir(project)
    t = time.perf_counter()
    out: dict = {}
    if step == "agreement":
        from pipeline.core import paths
        from pipeline.core.team import Team
        from pipeline.engines.agreement import agreement
        from pipeline.engines.prescore_file import PRESCORE, read_scores

        team = Team.load(paths.REVIEWS_DIR)
        out["fold_s"] = time.perf_counter() - t
        t1 = time.perf_counter()
        scores = read_scores(PRESCORE)
        out["prescore_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        report = agreement(team, overlap=2, scores=scores)
        out["stats_s"] = time.perf_counter() - t1
        out["decisions"] = sum(r["decided"] for r in report["reviewers"].values())
        out["alpha"], out["ci"], out["auc"] = report["alpha"], report["alpha_ci95"], report["judge"]["auc"]
    else:
        from pipeline.core.params import load_params
        from pipeline.stages import build

        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            build.run(load_params("params.yaml"))
        out["rules"] = json.loads(Path("reports/dataset.json").read_text())["review_rules"]
    out["s"] = time.perf_counter() - t
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_team(args) -> int:
    import json

    with tempfile.TemporaryDirectory(prefix="tenny-bench-team-") as tmp:
        project = Path(tmp)
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--n", str(args.n), "--per-reviewer", str(args.per_reviewer),
                        "--team-generate", str(project)], check=True, capture_output=True)
        print(f"generated {args.n:,} samples, 3 logs x {args.per_reviewer:,} decisions, {args.n:,} prescores, "
              f"in {time.perf_counter() - t:.1f} s")
        os.sync()
        figs = {}
        for step in ("agreement", "build"):
            done = subprocess.run([sys.executable, __file__, "--team-child", step, str(project)], check=True,
                                  capture_output=True, text=True)
            figs[step] = json.loads(done.stdout.splitlines()[-1])
        os.chdir(project)
        w, h = (int(x) for x in args.size.split("x"))
        t0 = time.perf_counter()
        out = asyncio.run(drive(project / "data/deduped/samples.jsonl", project / "data/reviews/alice.jsonl",
                                args.keys, t0, (w, h), search=False))
    a, b = figs["agreement"], figs["build"]
    print(f"time to first sample    {out['first_sample_s']:.3f} s   (as alice, overlap 2, resumed at "
          f"#{out['first_pos'] + 1:,}; includes importing Textual)")
    print(f"time to full index      {out['full_index_s']:.3f} s")
    print(f"key-to-screen p50       {out['key_p50_ms']:.1f} ms")
    print(f"key-to-screen p95       {out['key_p95_ms']:.1f} ms   (max {out['key_max_ms']:.1f} ms, {args.keys} keys)")
    print(f"app peak memory         {rss_mb():.0f} MB")
    print(f"agreement               {a['fold_s'] + a['stats_s']:.2f} s   (fold of {a['decisions']:,} decisions "
          f"{a['fold_s']:.2f} s, statistics {a['stats_s']:.2f} s; alpha {a['alpha']:.3f} {a['ci']}, judge AUC "
          f"{a['auc']:.3f}); prescore read {a['prescore_s']:.2f} s; peak {a['rss_mb']:.0f} MB")
    print(f"build, three logs       {b['s']:.1f} s, peak RSS {b['rss_mb']:.0f} MB   ({b['rules']})")
    return 0


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def drive(records: Path, log: Path, keys: int, t0: float, size: tuple[int, int], search: bool = True) -> dict:
    from tui.review_app import ReviewApp

    app = ReviewApp(records, log, dropped=records.parent / "none.jsonl", base_dir=records.parent / "none")
    # Screen time is measured without Pilot.press (which sleeps in 20 ms steps
    # waiting for idle): keys go in through the driver, as a terminal's would,
    # and the clock stops when the screen update that follows has been rendered
    # to terminal bytes (headless Textual skips that step; this wrapper does it,
    # as a run in a real terminal would).
    from textual import events
    from textual._compositor import CompositorUpdate

    displays: list[float] = []
    original = app._display

    def display(screen_, renderable):
        if isinstance(renderable, CompositorUpdate):
            renderable.render_segments(app.console)
            displays.append(time.perf_counter())
        return original(screen_, renderable)

    app._display = display
    out: dict = {}
    async with app.run_test(size=size) as pilot:
        screen = app.review
        while screen.current is None:
            if screen.error:
                raise SystemExit(screen.error)
            await asyncio.sleep(0.001)
        shown_at = time.perf_counter()
        while not any(d >= shown_at for d in displays):
            await asyncio.sleep(0.001)
        out["first_sample_s"] = min(d for d in displays if d >= shown_at) - t0
        out["first_pos"] = screen.pos
        while not screen.ready:
            await asyncio.sleep(0.005)
        out["full_index_s"] = time.perf_counter() - t0
        out["samples"] = len(screen.queue)
        await pilot.pause()

        rng = random.Random(1)
        mix = ["j", "j", "k", "a", "x", "space", "u", "j"]
        times = []
        for _ in range(keys):
            key = rng.choice(mix)
            before = screen.updates
            displays.clear()
            t = time.perf_counter()
            app._driver.send_message(events.Key(key, " " if key == "space" else key))
            while screen.updates == before:
                await asyncio.sleep(0)
            changed = time.perf_counter()
            while not any(d >= changed for d in displays):
                await asyncio.sleep(0)
            times.append(min(d for d in displays if d >= changed) - t)
            await asyncio.sleep(0.005)  # a person's next key comes later than that
        times.sort()
        out["key_p50_ms"] = 1000 * statistics.median(times)
        out["key_p95_ms"] = 1000 * times[int(0.95 * (len(times) - 1))]
        out["key_max_ms"] = 1000 * times[-1]

        queue = screen.queue
        if not search:
            return out
        t = time.perf_counter()
        queue.search("no such words anywhere", screen.pos or 0)
        out["search_miss_s"] = time.perf_counter() - t
        t = time.perf_counter()
        mask = queue.slot_mask("topic", "airport")
        out["slot_filter_s"] = time.perf_counter() - t
        out["slot_filter_hits"] = int(mask.sum())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="samples (default 1,000,000)")
    ap.add_argument("--decided", type=int, default=0, help="samples already decided in the log")
    ap.add_argument("--keys", type=int, default=300, help="keystrokes to time")
    ap.add_argument("--size", default="100x30", help="terminal size WxH")
    ap.add_argument("--generate", nargs=3, metavar=("RECORDS", "LOG", "N_DECIDED"), help=argparse.SUPPRESS)
    ap.add_argument("--team", action="store_true", help="three reviewers, overlap 2, a prescore file (issue 27)")
    ap.add_argument("--per-reviewer", type=int, default=300_000, help="--team: decisions per reviewer")
    ap.add_argument("--team-generate", metavar="PROJECT", help=argparse.SUPPRESS)
    ap.add_argument("--team-child", nargs=2, metavar=("STEP", "PROJECT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.team_generate:
        generate_team(Path(args.team_generate), args.n, args.per_reviewer)
        return 0
    if args.team_child:
        import json

        print(json.dumps(team_child(args.team_child[0], Path(args.team_child[1]))))
        return 0
    if args.team:
        return run_team(args)
    if args.generate:
        generate(Path(args.generate[0]), args.n, int(args.generate[2]), Path(args.generate[1]))
        return 0
    with tempfile.TemporaryDirectory(prefix="tenny-bench-review-") as tmp:
        records, log = Path(tmp) / "samples.jsonl", Path(tmp) / "decisions.jsonl"
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--n", str(args.n), "--generate", str(records), str(log),
                        str(args.decided)], check=True)
        print(f"generated {args.n:,} samples ({records.stat().st_size / 1e6:,.0f} MB), "
              f"{args.decided:,} decisions, in {time.perf_counter() - t:.1f} s")
        os.sync()
        w, h = (int(x) for x in args.size.split("x"))
        t0 = time.perf_counter()
        out = asyncio.run(drive(records, log, args.keys, t0, (w, h)))
    print(f"samples                 {out['samples']:,}")
    print(f"time to first sample    {out['first_sample_s']:.3f} s   (resumed at #{out['first_pos'] + 1:,}; "
          f"includes importing Textual)")
    print(f"time to full index      {out['full_index_s']:.3f} s")
    print(f"key-to-screen p50       {out['key_p50_ms']:.1f} ms")
    print(f"key-to-screen p95       {out['key_p95_ms']:.1f} ms   (max {out['key_max_ms']:.1f} ms, {args.keys} keys)")
    print(f"peak memory (max RSS)   {rss_mb():.0f} MB")
    print(f"search, no match        {out['search_miss_s']:.2f} s   (worker; screen stays live)")
    print(f"slot filter topic=…     {out['slot_filter_s']:.2f} s   ({out['slot_filter_hits']:,} hits; worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
