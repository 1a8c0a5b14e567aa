"""Stage synthesize: make data/raw/samples.jsonl from the configured provider.

Providers (``synthesize.provider``):
- ``import``: pasted chat transcripts in data/seed/ (the manual mode);
- ``dataset``: an existing JSONL / CSV / Parquet file with a field mapping;
- ``openai``: any OpenAI-compatible API, from prompt files in data/prompts/.

A provider yields records and counts what it cleaned or dropped in a
:class:`SynthReport`; this module applies the rule filters (shared by every
provider), writes the records atomically and the report as DVC metrics.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Filters, Params
from pipeline.core.records import render_text, write_json, write_records

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


def filtered(records: Iterator[dict], rules: RuleFilter, report: SynthReport, empty_hint: str) -> Iterator[dict]:
    """Apply the rules; raise at the end if nothing survived, before the output is replaced."""
    seen: set[str] = set()
    for record in records:
        reason = rules.reason_to_drop(record)
        if reason:
            report.dropped[reason] += 1
            continue
        if record["id"] in seen:  # the same sample twice: an exact duplicate, not an error here
            report.dropped["exact_duplicate"] += 1
            continue
        seen.add(record["id"])
        report.samples += 1
        yield record
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
    # The previous output stays in place unless this run produced something.
    n = write_records(paths.RAW, filtered(provider.generate(params, report), rules, report, provider.EMPTY_HINT))
    write_json(paths.SYNTH_REPORT, report.to_json())
    print(f"synthesize: {n} samples → {paths.RAW} "
          f"(cleaned {sum(report.cleaned.values())} quirks, dropped {sum(report.dropped.values())})")
    return 0
