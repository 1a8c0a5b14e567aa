"""Provider ``dataset``: start from an existing JSONL, CSV or Parquet file.

``synthesize.dataset`` maps the file's fields onto one record body. Each of
``text``, ``prompt``, ``completion`` is either a field name (``quote``) or a
template over the row (``Quote by {author}: {quote}``); ``messages`` names a
field holding an OpenAI-style list. Rows are streamed; a row that lacks a
mapped field is an error naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import string
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.params import DatasetSource, Params
from pipeline.core.records import RecordError, body_problem, iter_jsonl, make_record

EMPTY_HINT = "check synthesize.dataset.path and its field mapping"


def detect_format(src: DatasetSource) -> str:
    if src.format != "auto":
        return src.format
    suffix = Path(src.path).suffix.lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in formats:
        raise UserError(f"synthesize.dataset.path: {src.path}: cannot tell the format from '{suffix}'; "
                        "set synthesize.dataset.format to jsonl, csv or parquet")
    return formats[suffix]


def iter_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """(line or row number, row) in file order, streamed."""
    if fmt == "jsonl":
        yield from iter_jsonl(path)
    elif fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            try:
                for row in reader:
                    yield reader.line_num, row
            except (csv.Error, UnicodeDecodeError) as err:
                raise UserError(f"{path}:{reader.line_num}: not readable as CSV: {err}") from None
    else:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises its own error types for a bad file
            raise UserError(f"{path}: not a readable Parquet file: {err}") from None
        row_no = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row


def _fields_of(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render(spec: str, row: dict, path: Path, where: int, key: str) -> str | None:
    """A mapped value: the field itself, or the template filled from the row."""
    if spec in row and not _fields_of(spec):
        value = row[spec]
    else:
        names = _fields_of(spec)
        if not names:
            raise UserError(f"synthesize.dataset.{key}: {spec!r} is neither a field of {path} "
                            f"(fields: {', '.join(map(str, row))}) nor a template with {{fields}}")
        missing = [n for n in names if n not in row]
        if missing:
            raise UserError(f"{path}:{where}: field {missing[0]!r} (used by synthesize.dataset.{key}) is missing; "
                            f"fields here: {', '.join(map(str, row))}")
        if any(row[n] is None or row[n] == "" for n in names):
            return None  # an empty cell (CSV's missing value) makes no sample
        value = spec.format_map({n: row[n] for n in names})
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def generate(params: Params, report) -> Iterator[dict]:
    src = params.synthesize.dataset
    if src is None:
        raise UserError("synthesize.provider is dataset but synthesize.dataset is not set; "
                        "give at least path and a mapping, e.g. {path: data/examples/quotes.csv, text: 'Quote by {author}: {quote}'}")
    path = Path(src.path)
    if not path.is_file():
        raise UserError(f"synthesize.dataset.path: {path}: no such file")
    fmt = detect_format(src)
    for where, row in iter_rows(path, fmt):
        meta = {"provider": "dataset", "source": path.as_posix(), "row": where}
        for name in src.meta_fields:
            if name not in row:
                raise UserError(f"{path}:{where}: field {name!r} (in synthesize.dataset.meta_fields) is missing")
            meta[name] = row[name]
        if src.messages:
            if src.messages not in row:
                raise UserError(f"{path}:{where}: field {src.messages!r} (synthesize.dataset.messages) is missing")
            body = {"messages": row[src.messages]}
        elif src.text:
            body = {"text": render(src.text, row, path, where, "text")}
        else:
            body = {"prompt": render(src.prompt, row, path, where, "prompt"),
                    "completion": render(src.completion, row, path, where, "completion")}
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in body.values()):
            report.dropped["empty_field"] += 1
            continue
        problem = body_problem(body)
        if problem:
            raise RecordError(path, where, problem[0] or src.messages, problem[1])
        yield make_record(**body, meta=meta)
