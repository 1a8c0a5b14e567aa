"""The judge's report as the Eval screen shows it: summary, verdicts per prompt, numbers.

Reads the two files of the judge contract (a folder holding ``judge.json`` and
``judgments.jsonl``: ``reports/`` after the eval stage, or the ``--out`` of
``tenny judge A B``). Verdicts, reasons and answers are model text: every
string reaches the screen through ``pipeline.core.text``, never as markup.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import as_text

# The same two names in reports/ and in any `tenny judge --out` folder.
JUDGE_FILE = paths.JUDGE_REPORT.name
JUDGMENTS_FILE = paths.JUDGMENTS.name
JUDGE_OFF = ("judge off: set eval.judge.model in params.yaml (docs/judge.md), "
             "then `dvc repro eval` to have a model judge base vs adapter")


def fmt_number(value: object) -> str:
    """A number in full at a width a table column keeps: 74.83 stays 74.83, never a prefix."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def fmt_change(base: object, adapter: object) -> str:
    """adapter − base, signed, with the relative change when base is not zero."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (base, adapter))
    if not numeric:
        return ""
    delta = adapter - base
    out = ("+" if delta > 0 else "") + fmt_number(delta)
    if base:
        out += f" ({delta / abs(base) * 100:+.0f} %)"
    return out


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


@dataclass
class JudgeReport:
    """judge.json plus the verdicts of judgments.jsonl grouped by prompt, in file order."""

    summary: dict
    pairs: dict[str, list[dict]] = field(default_factory=dict)  # prompt → pair verdicts
    persona: dict[str, list[dict]] = field(default_factory=dict)  # prompt → persona scores

    @property
    def enabled(self) -> bool:
        return bool(self.summary.get("model"))

    @property
    def baseline(self) -> str:
        return str(self.summary.get("baseline") or "base")

    @property
    def challenger(self) -> str:
        return str(self.summary.get("challenger") or "adapter")

    @property
    def prompts(self) -> list[str]:
        return list(dict.fromkeys([*self.pairs, *self.persona]))

    def answers(self) -> list[dict]:
        """{"prompt", "base", "adapter"} rows rebuilt from the pair verdicts: baseline and challenger answers."""
        rows = []
        for prompt in self.prompts:
            row = {"prompt": prompt, "base": None, "adapter": None}
            for v in self.pairs.get(prompt, []):
                first, a, b = v.get("shown_first"), v.get("answer_a"), v.get("answer_b")
                baseline_answer, challenger_answer = (a, b) if first == self.baseline else (b, a)
                row["base"] = row["base"] if row["base"] is not None else _str_or_none(baseline_answer)
                row["adapter"] = row["adapter"] if row["adapter"] is not None else _str_or_none(challenger_answer)
            for s in self.persona.get(prompt, []):
                side = "base" if s.get("model") == self.baseline else "adapter"
                if row[side] is None:
                    row[side] = _str_or_none(s.get("answer"))
            rows.append(row)
        return rows


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def load_judge(folder: Path) -> JudgeReport | None:
    """The judge report in ``folder``; None when judge.json is not there (no eval run with the judge yet)."""
    path = folder / JUDGE_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-run `dvc repro eval` (or `tenny judge`)") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(summary).__name__}; re-run `dvc repro eval`")
    report = JudgeReport(summary)
    lines = folder / JUDGMENTS_FILE
    if report.enabled and lines.exists():
        from pipeline.core.records import iter_jsonl

        for _, row in iter_jsonl(lines):
            prompt = row.get("prompt")
            prompt = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
            if row.get("kind") == "persona":
                report.persona.setdefault(prompt, []).append(row)
            else:
                report.pairs.setdefault(prompt, []).append(row)
    return report


def summary_line(report: JudgeReport) -> str:
    """'adapter over base: 68 % (54–79 %) over 50 verdicts, position bias 55 %, 0 invalid'."""
    s = report.summary
    n, invalid = s.get("n_pairs") or 0, s.get("invalid") or 0
    head = f"{report.challenger} over {report.baseline}: "
    if s.get("win_rate") is None:
        return head + f"no valid verdict ({n} asked, {invalid} invalid)"
    interval = ""
    if s.get("win_rate_low") is not None and s.get("win_rate_high") is not None:
        interval = f" ({s['win_rate_low'] * 100:.0f}–{s['win_rate_high'] * 100:.0f} %)"
    unanswered = f", {s['unanswered']} unanswered (budget)" if s.get("unanswered") else ""
    if s.get("prompts_judged") is not None:  # the win rate is by prompt (issue 22); older reports by verdict
        return (head + f"{pct(s['win_rate'])}{interval} over {s['prompts_judged']} prompts "
                f"(both orders agree on {pct(s.get('consistency'))}), "
                f"position bias {pct(s.get('position_bias'))}, {invalid} invalid{unanswered}")
    return (head + f"{pct(s['win_rate'])}{interval} over {n} verdicts, "
            f"position bias {pct(s.get('position_bias'))}, {invalid} invalid{unanswered}")


def _persona_line(report: JudgeReport) -> str | None:
    persona = report.summary.get("persona")
    if not isinstance(persona, dict):
        return None
    parts = []
    for side, name in (("baseline", report.baseline), ("challenger", report.challenger)):
        p = persona.get(side)
        if isinstance(p, dict) and p.get("mean") is not None:
            interval = (f" ({fmt_number(p['low'])}–{fmt_number(p['high'])})"
                        if p.get("low") is not None and p.get("high") is not None else "")
            parts.append(f"{name} {fmt_number(p['mean'])}{interval}, n {p.get('n', '?')}")
    return "persona score 1–10: " + " · ".join(parts) if parts else None


def summary_text(report: JudgeReport | None, problem: str | None = None) -> Text:
    """The judge block: how to turn it on, what went wrong, or the figures."""
    if problem:
        return as_text(problem, multiline=True, style="red")
    if report is None or not report.enabled:
        return Text(JUDGE_OFF, style="dim")
    s = report.summary
    lines = [as_text(summary_line(report), style="bold")]
    persona = _persona_line(report)
    if persona:
        lines.append(as_text(persona))
    detail = [f"wins {s.get('wins', 0)} · losses {s.get('losses', 0)} · ties {s.get('ties', 0)}",
              f"{s.get('n_prompts', 0)} prompts", f"judge {s.get('model')}"]
    if isinstance(s.get("cost_usd"), (int, float)):
        detail.append(f"${s['cost_usd']:.4f}")
    requests = s.get("requests")
    if isinstance(requests, dict):
        detail.append(f"{requests.get('sent', 0)} requests ({requests.get('cached', 0)} cached)")
    lines.append(as_text(" · ".join(detail), style="dim"))
    return Text("\n").join(lines)


def _winner_label(v: dict) -> str:
    winner = v.get("winner")
    if winner is None:
        return "invalid (unparseable)"
    return "tie" if winner == "tie" else f"{winner} wins"


def verdicts_text(report: JudgeReport, prompt: str) -> Text:
    """Every verdict on one prompt: each order with its winner and reason, then the persona scores."""
    out = Text()
    out.append_text(as_text(prompt, multiline=True, style="bold"))
    pairs, scores = report.pairs.get(prompt, []), report.persona.get(prompt, [])
    if not pairs and not scores:
        out.append("\n\nno verdict on this prompt", style="dim")
        return out
    for i, v in enumerate(pairs, 1):
        out.append(f"\n\norder {i}: ", style="bold")
        out.append_text(as_text(f"{v.get('shown_first', '?')} shown first → verdict {v.get('verdict')}: "))
        out.append_text(as_text(_winner_label(v), style="bold"))
        out.append("\n")
        out.append_text(as_text(v.get("reason") or "(no reason given)", multiline=True))
    for s in scores:
        score = s.get("score")
        out.append("\n\npersona ", style="bold")
        out.append_text(as_text(f"{s.get('model', '?')}: {'invalid' if score is None else f'{score}/10'}", style="bold"))
        out.append("\n")
        out.append_text(as_text(s.get("reason") or "(no reason given)", multiline=True))
    return out


def prompt_verdict_cell(report: JudgeReport, prompt: str) -> str:
    """A short who-won per order for the prompt table: 'adapter, tie'."""
    winners = []
    for v in report.pairs.get(prompt, []):
        w = v.get("winner")
        winners.append("?" if w is None else str(w))
    return ", ".join(winners) or "–"
