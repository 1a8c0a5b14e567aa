"""A loopback OpenAI-compatible server for tests and the benchmark.

Speaks enough of the protocol for tenny: ``POST /v1/chat/completions``,
``POST /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches`` and
``GET /v1/batches/{id}``. It binds 127.0.0.1 on an ephemeral port only, keeps
connections alive (aiohttp), and counts every request so a test can assert
what was asked and how often.

Faults are scripted, never random unless asked for:
- ``latency``: seconds every chat response waits (asyncio, so it costs no CPU);
- ``slots``: a server that works on at most this many requests at once (a
  laptop's llama.cpp, ``transformers serve``): each takes ``latency`` seconds
  of a slot, the rest queue in arrival order, and a request whose client gave
  up is still served (as by servers that do not cancel): ``Stats.busy_s`` and
  ``Stats.wasted_s`` say how much of the server's time went to answers nobody
  read;
- ``rules``: ``Rule(match, faults)`` gives the first attempts of each request
  whose last user message contains ``match`` the listed faults, in order;
- ``fail_rate``: a seeded share of first attempts answered 429 or 500
  (benchmark); retries of the same request then succeed.

Fault names: ``429`` (``429:0.2`` sets Retry-After to 0.2 s), ``500``,
``timeout`` (hangs longer than any test timeout), ``length`` (truncated, with
finish_reason=length), ``garbage`` (a 200 whose body is not JSON), ``drop``
(the connection is closed without a response), ``http:<status>`` (that
error status, e.g. ``http:401``), ``quota`` (429 insufficient_quota: not retryable).

Run it alone for the benchmark: ``python tests/openai_server.py --latency 0.1``
prints ``PORT <n>`` and serves until killed; ``GET /_stats`` returns the counts
and ``POST /_control`` changes latency / fail_rate / batch_polls.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

HOST = "127.0.0.1"  # loopback only, by design


@dataclass
class Rule:
    match: str
    faults: list[str]


def request_key(body: dict) -> str:
    """The server's own identity for a request: the whole body, canonical."""
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def last_user(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def default_responder(body: dict) -> str:
    """Five numbered lines unique to the request (so every sample has its own id)."""
    tag = request_key(body)[:8]
    return "\n".join(f"{i}. Sample {i} of request {tag}: the coffee is cold again." for i in range(1, 6))


@dataclass
class Stats:
    chat_requests: int = 0
    chat_ok: int = 0
    by_key: Counter = field(default_factory=Counter)      # attempts per request
    ok_by_key: Counter = field(default_factory=Counter)   # successful answers per request
    faults: Counter = field(default_factory=Counter)
    arrivals: dict = field(default_factory=lambda: defaultdict(list))  # key → monotonic times
    auth: set = field(default_factory=set)
    bodies: list = field(default_factory=list)
    files_uploaded: int = 0
    batches_created: int = 0
    batch_retrieves: int = 0
    busy_s: float = 0.0        # slot server: seconds of service given
    wasted_s: float = 0.0      # of which to requests whose client had gone
    abandoned: int = 0         # requests served after their client had gone
    active: int = 0            # slot server: requests queued or in service now

    def to_json(self) -> dict:
        twice = sum(1 for n in self.ok_by_key.values() if n > 1)
        return {
            "chat_requests": self.chat_requests,
            "chat_ok": self.chat_ok,
            "distinct_requests": len(self.by_key),
            "ok_distinct": len(self.ok_by_key),
            "ok_asked_twice": twice,
            "faults": dict(self.faults),
            "files_uploaded": self.files_uploaded,
            "batches_created": self.batches_created,
            "batch_retrieves": self.batch_retrieves,
            "busy_s": round(self.busy_s, 3),
            "wasted_s": round(self.wasted_s, 3),
            "abandoned": self.abandoned,
            "active": self.active,
        }


class FakeOpenAI:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        responder: Callable[[dict], str] = default_responder,
        rules: list[Rule] | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
        batch_polls: int = 1,
        hang_s: float = 2.0,
        slots: int | None = None,
    ):
        self.latency = latency
        self.slots = slots
        self._slot_sem: asyncio.Semaphore | None = None
        self.responder = responder
        self.rules = list(rules or [])
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.batch_polls = batch_polls  # retrieves a batch stays in progress before completing
        self.hang_s = hang_s
        self.keep_bodies = False  # tests that compare what was asked turn this on
        self.rejects: set[str] = set()  # request fields answered 400, as a server that does not know them
        self.stats = Stats()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self._changed = threading.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}/content", self.download)
        app.router.add_post("/v1/batches", self.create_batch)
        app.router.add_get("/v1/batches/{id}", self.retrieve_batch)
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_post("/_control", self.control)
        return app

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, port, backlog=1024)
        await site.start()
        sock = site._server.sockets[0]  # the ephemeral port the OS chose
        self.url = f"http://{HOST}:{sock.getsockname()[1]}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    # ------------------------------------------------------------ thread mode (tests)

    def start_in_thread(self) -> "FakeOpenAI":
        ready = threading.Event()

        def main():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop_thread(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def wait_until(self, predicate: Callable[[Stats], bool], timeout: float = 20.0) -> bool:
        """Block (a test's thread) until ``predicate(stats)`` holds; no polling sleeps."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.stats), timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _count_ok(self, key: str) -> None:
        self.stats.chat_ok += 1
        self.stats.ok_by_key[key] += 1
        self._notify()

    # ------------------------------------------------------------ chat

    async def _serve_in_slot(self, request: web.Request) -> None:
        """Wait for a free slot, then work ``latency`` s; the work is done even if the client left."""
        if self._slot_sem is None:  # made in the server's loop
            self._slot_sem = asyncio.Semaphore(self.slots)
        stats = self.stats
        stats.active += 1
        try:
            async with self._slot_sem:
                await asyncio.sleep(self.latency)
                stats.busy_s += self.latency
                if request.transport is None or request.transport.is_closing():
                    stats.wasted_s += self.latency
                    stats.abandoned += 1
        finally:
            stats.active -= 1
            self._notify()

    def _fault_for(self, body: dict, attempt: int) -> str | None:
        text = last_user(body)
        for rule in self.rules:
            if rule.match in text:
                return rule.faults[attempt] if attempt < len(rule.faults) else None
        if self.fail_rate and attempt == 0 and self.rng.random() < self.fail_rate:
            return self.rng.choice(["429:0.01", "500"])
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats.chat_requests += 1
        body = await request.json()
        key = request_key(body)
        attempt = self.stats.by_key[key]
        self.stats.by_key[key] += 1
        self.stats.arrivals[key].append(time.monotonic())
        self.stats.auth.add(request.headers.get("Authorization", ""))
        if self.keep_bodies:
            self.stats.bodies.append(body)
        self._notify()
        unknown = sorted(self.rejects & set(body))
        if unknown:
            self.stats.faults["rejected_field"] += 1
            return web.json_response({"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}",
                                                "type": "invalid_request_error"}}, status=400)
        fault = self._fault_for(body, attempt)
        if self.slots:
            await self._serve_in_slot(request)
        elif self.latency:
            await asyncio.sleep(self.latency)
        if fault:
            self.stats.faults[fault.split(":")[0]] += 1
        if fault and fault.startswith("429"):
            _, _, after = fault.partition(":")
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                status=429, headers={"Retry-After": after or "0.05"},
            )
        if fault == "500":
            return web.json_response({"error": {"message": "The server had an error", "type": "server_error"}}, status=500)
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        if fault == "garbage":
            return web.Response(text="<html>upstream hiccup</html>", content_type="application/json")
        if fault == "drop":
            request.transport.close()
            raise asyncio.CancelledError  # nothing more to say on a closed connection
        if fault == "quota":
            return web.json_response({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                                "code": "insufficient_quota"}}, status=429)
        if fault and fault.startswith("http:"):
            status = int(fault.split(":")[1])
            return web.json_response({"error": {"message": f"scripted {status}", "type": "invalid_request_error"}}, status=status)
        content = self.responder(body)
        finish = "stop"
        if fault == "length":  # cut inside the last line, as max_tokens does
            last = content.rstrip().rsplit("\n", 1)[-1]
            content = content.rstrip()[: len(content.rstrip()) - max(1, len(last) // 2)]
            finish = "length"
        self._count_ok(key)
        return web.json_response(completion(body, content, finish))

    # ------------------------------------------------------------ files and batches

    async def upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        data, purpose, name = b"", "batch", "input.jsonl"
        async for part in reader:
            if part.name == "file":
                name = part.filename or name
                data = bytes(await part.read())
            elif part.name == "purpose":
                purpose = (await part.text()).strip()
        self.stats.files_uploaded += 1
        file_id = f"file-{len(self.files) + 1:04d}"
        self.files[file_id] = data
        return web.json_response(file_object(file_id, name, purpose, len(data)))

    async def download(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.json_response({"error": {"message": "No such file"}}, status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return web.json_response({"error": {"message": "input_file_id not found"}}, status=400)
        self.stats.batches_created += 1
        batch_id = f"batch_{len(self.batches) + 1:04d}"
        lines = [ln for ln in self.files[body["input_file_id"]].splitlines() if ln.strip()]
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
            "status": "validating", "output_file_id": None, "error_file_id": None, "errors": None,
            "created_at": int(time.time()), "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_polls": 0,
        }
        return web.json_response(public(self.batches[batch_id]))

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        self.stats.batch_retrieves += 1
        self._notify()
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return web.json_response({"error": {"message": "No such batch"}}, status=404)
        batch["_polls"] += 1
        if batch["status"] in ("validating", "in_progress"):
            batch["status"] = "in_progress"
            if batch["_polls"] >= self.batch_polls:
                self._finish_batch(batch)
        return web.json_response(public(batch))

    def _finish_batch(self, batch: dict) -> None:
        out, errors = [], []
        for i, raw in enumerate(self.files[batch["input_file_id"]].splitlines()):
            if not raw.strip():
                continue
            item = json.loads(raw)
            body = item["body"]
            key = request_key(body)
            self.stats.by_key[key] += 1
            if self._fault_for(body, 0) == "500":
                errors.append({"id": f"batch_req_{i}", "custom_id": item["custom_id"], "response": None,
                               "error": {"code": "server_error", "message": "failed"}})
                continue
            self._count_ok(key)
            out.append({"id": f"batch_req_{i}", "custom_id": item["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": f"req_{i}",
                                     "body": completion(body, self.responder(body), "stop")}})
        out_id = f"file-{len(self.files) + 1:04d}"
        self.files[out_id] = "".join(json.dumps(o) + "\n" for o in out).encode()
        batch["output_file_id"] = out_id
        if errors:
            err_id = f"file-{len(self.files) + 1:04d}"
            self.files[err_id] = "".join(json.dumps(o) + "\n" for o in errors).encode()
            batch["error_file_id"] = err_id
        batch["status"] = "completed"
        batch["request_counts"] = {"total": len(out) + len(errors), "completed": len(out), "failed": len(errors)}

    # ------------------------------------------------------------ control

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json())

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json()
        for name in ("latency", "fail_rate", "batch_polls", "slots"):
            if name in body:
                setattr(self, name, body[name])
        if "slots" in body:
            self._slot_sem = None
        if body.get("reset"):
            self.stats = Stats()
        return web.json_response({"ok": True})


def completion(body: dict, content: str, finish: str) -> dict:
    prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])
    prompt_tokens, completion_tokens = max(1, prompt_chars // 4), max(1, len(content) // 4)
    return {
        "id": "chatcmpl-" + request_key(body),
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": body.get("model", "test-model"),
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def file_object(file_id: str, name: str, purpose: str, size: int) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
            "filename": name, "purpose": purpose, "status": "processed"}


def public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=None, help="requests served at once; the rest queue")
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency, fail_rate=args.fail_rate, seed=args.seed, slots=args.slots)

    async def serve():
        url = await server.start()
        print("PORT", url.rsplit(":", 1)[1].split("/")[0], flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
