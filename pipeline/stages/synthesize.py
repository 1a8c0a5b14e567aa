"""Stage synthesize: make data/raw/samples.jsonl from the configured provider.

Providers (``synthesize.provider``):
- ``import``: pasted chat transcripts in data/seed/ (the manual mode);
- ``dataset``: an existing JSONL / CSV / Parquet file with a field mapping;
- ``openai``: any OpenAI-compatible API, from prompt files in data/prompts/.

A provider yields records and counts what it cleaned or dropped in a
:class:`SynthReport`; this module applies the rule filters (shared by every
provider), writes the records atomically and the report as DVC metrics.

With ``synthesize.stop_when_novelty_below`` (provider openai), every sample
that passes the rules is checked, as it arrives in plan order, against the
samples kept so far by dedupe's own rule (:class:`Saturation`); once the share
of new ones over the last ``novelty_window`` falls below the bound, the stage
sets ``report.stop_requested`` and the provider sends nothing more. The stop
depends on plan order only, so a re-run from the cache stops at the same
sample and writes the same file.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from rapidfuzz.utils import default_process

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Filters, Params
from pipeline.core.records import render_text, write_json, write_records
from pipeline.engines.dedupe_index import Incremental

PROVIDERS = {
    "import": "pipeline.engines.synthesis.providers.transcripts",
    "dataset": "pipeline.engines.synthesis.providers.dataset_file",
    "openai": "pipeline.engines.synthesis.providers.openai_api",
}


@dataclass
class SynthReport:
    """What a run produced, cleaned and dropped; written to reports/synthesize.json."""

    provider: str
    cleaned: Counter = field(default_factory=Counter)   # quirk kind → lines fixed (bullet, numbering, quote, ...)
    dropped: Counter = field(default_factory=Counter)   # reason → samples dropped (chatter, truncated, filter:ban, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # provider figures (requests, tokens, cost, ...)
    samples: int = 0
    # Set by the stage when the generator saturated: a provider that can stop sends nothing
    # more and yields no further record (what is in flight still finishes).
    stop_requested: bool = False

    def to_json(self) -> dict:
        return {
            "provider": self.provider,
            "samples": self.samples,
            "cleaned": dict(sorted(self.cleaned.items())),
            "cleaned_total": sum(self.cleaned.values()),
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            **self.extra,
        }


class Provider(Protocol):
    def generate(self, params: Params, report: SynthReport) -> Iterator[dict]: ...


class RuleFilter:
    """Length bounds, required and banned patterns from params; counts drops by rule."""

    def __init__(self, filters: Filters):
        self.filters = filters
        try:
            self.require = [(p, re.compile(p)) for p in filters.require]
            self.ban = [(p, re.compile(p, re.IGNORECASE)) for p in filters.ban]
        except re.error as err:
            raise UserError(f"params.yaml: synthesize.filters: bad regex {err.pattern!r}: {err}") from None

    def reason_to_drop(self, record: dict) -> str | None:
        text = render_text(record)
        n = len(text.strip())
        if n < self.filters.min_chars:
            return "filter:min_chars"
        if n > self.filters.max_chars:
            return "filter:max_chars"
        for pattern, rx in self.require:
            if not rx.search(text):
                return f"filter:require:{pattern}"
        for pattern, rx in self.ban:
            if rx.search(text):
                return f"filter:ban:{pattern}"
        return None


class Saturation:
    """The share of new samples over the latest ``window``, and whether it fell below ``below``.

    New means what dedupe would keep: no earlier kept sample scores
    ``fuzz.ratio >= threshold`` (dedupe.threshold) on the ``default_process``ed
    text. Exact repeats count as repeats, though the stage drops them itself.
    """

    def __init__(self, below: float, window: int, threshold: float):
        self.below, self.window = below, window
        self.index = Incremental(threshold)
        self.recent: deque[bool] = deque(maxlen=window)
        self.new_in_window = 0
        self.seen = 0
        self.stopped = False

    def add(self, record: dict) -> bool:
        """Counts one sample in; True once the run should stop."""
        new = self.index.add(default_process(render_text(record)))
        if len(self.recent) == self.window:
            self.new_in_window -= self.recent[0]
        self.recent.append(new)
        self.new_in_window += new
        self.seen += 1
        if len(self.recent) == self.window and self.share() < self.below:
            self.stopped = True
        return self.stopped

    def share(self) -> float:
        return self.new_in_window / len(self.recent) if self.recent else 1.0

    def stop_line(self) -> str:
        percent = 100 * self.new_in_window // len(self.recent)  # floored: 19.9 % is not "20 %" under 0.2
        return (f"synthesize: stopped at {self.seen} samples: only {percent} % of the last {self.window} were new "
                f"(synthesize.stop_when_novelty_below {self.below}); lower it to go on, or change the prompts/slots")


def filtered(records: Iterator[dict], rules: RuleFilter, report: SynthReport, empty_hint: str,
             saturation: Saturation | None = None) -> Iterator[dict]:
    """Apply the rules; raise at the end if nothing survived, before the output is replaced.

    With ``saturation``, each sample that passes the rules is counted in after
    it is written (or dropped as a repeat); when it says stop, the provider is
    told through ``report.stop_requested``, yields nothing more, and the stream ends.
    """
    seen: set[str] = set()
    for record in records:
        reason = rules.reason_to_drop(record)
        if reason:
            report.dropped[reason] += 1
            continue
        if record["id"] in seen:  # the same sample twice: an exact duplicate, not an error here
            report.dropped["exact_duplicate"] += 1
        else:
            seen.add(record["id"])
            report.samples += 1
            yield record
        if saturation is not None and not report.stop_requested and saturation.add(record):
            report.stop_requested = True
    if not seen:
        raise UserError(
            f"synthesize ({report.provider}): no usable samples "
            f"(dropped: {dict(report.dropped) or 'none'}); {empty_hint}"
        )


def run(params: Params, args: Any = None) -> int:
    provider_name = params.synthesize.provider
    provider = importlib.import_module(PROVIDERS[provider_name])
    report = SynthReport(provider=provider_name)
    rules = RuleFilter(params.synthesize.filters)
    cfg = params.synthesize
    saturation = None
    if provider_name == "openai" and cfg.stop_when_novelty_below is not None:  # only a paid run needs stopping
        saturation = Saturation(cfg.stop_when_novelty_below, cfg.novelty_window, params.dedupe.threshold)
    # The previous output stays in place unless this run produced something.
    n = write_records(paths.RAW, filtered(provider.generate(params, report), rules, report, provider.EMPTY_HINT,
                                          saturation))
    report.extra["novelty_stop"] = int(report.stop_requested)
    if saturation is not None and saturation.seen:
        report.extra["novelty_last_window"] = round(saturation.share(), 4)
    write_json(paths.SYNTH_REPORT, report.to_json())
    if report.stop_requested:
        print(saturation.stop_line(), file=sys.stderr)
    print(f"synthesize: {n} samples → {paths.RAW} "
          f"(cleaned {sum(report.cleaned.values())} quirks, dropped {sum(report.dropped.values())})")
    return 0
