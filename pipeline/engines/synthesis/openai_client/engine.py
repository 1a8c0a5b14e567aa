"""The request engine: bounded concurrency, pacing, retries, cache, budget.

The stage consumes a plain iterator, so the event loop is driven from it: each
``next()`` runs the loop until the next answers *in plan order* are ready. The
output file is then the same for a fresh run and for a re-run served from the
cache. At most ``window`` answers wait for an earlier straggler, which bounds
memory; the plan itself is never held.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeline.core.errors import UserError
from pipeline.core.params import SynthesizeParams
from pipeline.engines.synthesis.openai_client.adaptive import AdaptiveLimit, Gate, ServerWatch
from pipeline.engines.synthesis.openai_client.cost import Budget
from pipeline.engines.synthesis.openai_client.limits import Limiter, backoff, estimate_tokens, retry_after
from pipeline.engines.synthesis.openai_client.plan import Planned


@dataclass
class RunStats:
    """Figures for reports/synthesize.json (DVC metrics: numbers only)."""

    planned: int = 0
    cached: int = 0            # answers served from .tenny/ (not paid again)
    sent: int = 0              # distinct requests sent in this run
    attempts: int = 0          # HTTP requests, retries included
    ok: int = 0
    failed: int = 0
    retries: int = 0
    unsent: int = 0            # left out by a budget stop
    samples: int = 0           # records made, before rule filters
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0      # spent in this run
    cost_usd_cached: float = 0.0  # what the cached answers cost when they were bought
    budget_stop: int = 0
    wall_s: float = 0.0
    abandoned: int = 0         # requests given up on while the server may still work on them (timeouts)
    retries_by_reason: Counter = field(default_factory=Counter)
    failed_by_reason: Counter = field(default_factory=Counter)
    client: dict = field(default_factory=dict)  # the adaptive limit and the server's latency (Engine.figures)

    def fail(self, reason: str) -> None:
        """One request given up on, counted by reason."""
        self.failed += 1
        self.failed_by_reason[reason] += 1

    def paid(self, answer: dict) -> None:
        """One answer bought in this run: its tokens and cost."""
        self.ok += 1
        self.prompt_tokens += answer["prompt_tokens"]
        self.completion_tokens += answer["completion_tokens"]
        self.cost_usd += answer["cost_usd"]

    def to_json(self) -> dict:
        return {
            "requests": {
                "planned": self.planned, "cached": self.cached, "sent": self.sent, "attempts": self.attempts,
                "ok": self.ok, "failed": self.failed, "retries": self.retries, "unsent": self.unsent,
            },
            "retries_by_reason": dict(sorted(self.retries_by_reason.items())),
            "failed_by_reason": dict(sorted(self.failed_by_reason.items())),
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "total": self.prompt_tokens + self.completion_tokens},
            "cost_usd": round(self.cost_usd, 6),
            "cost_usd_cached": round(self.cost_usd_cached, 6),
            "budget_stop": self.budget_stop,
            "wall_s": round(self.wall_s, 3),
            "abandoned": self.abandoned,
            "client": dict(self.client),
        }


class Garbage(Exception):
    """A 200 whose body is not a chat completion."""


class Stalled(Exception):
    """The server made no progress for timeout_s while this request waited: given up on."""


class Engine:
    """Answers in plan order (see the module docstring).

    ``in_step``: a new request is sent only once the consumer has read every
    answer already there. A consumer that may call :meth:`stop_sending` (the
    novelty stop) needs it: otherwise a re-run served from the cache runs ahead
    of the consumer and pays for requests past the point where the first run
    stopped, before the consumer gets to that point and stops again.
    """

    def __init__(self, cfg: SynthesizeParams, api_key: str, cache, budget: Budget, stats: RunStats,
                 progress=None, cache_only: bool = False, in_step: bool = False):
        self.cfg = cfg
        self.in_step = in_step
        self.api_key = api_key
        self.cache = cache
        self.budget = budget
        self.stats = stats
        self.progress = progress
        self.cache_only = cache_only
        self.limiter = Limiter(cfg.requests_per_minute, cfg.tokens_per_minute)
        self.rng = random.Random()  # jitter must differ between clients hitting one server
        self.window = max(1024, 32 * cfg.concurrency)  # answers held for a straggler: ~2 KB each
        self.client = None
        self.limit = AdaptiveLimit(cfg.concurrency, adaptive=cfg.adaptive_concurrency)
        self.watch = ServerWatch()
        if progress is not None:
            progress.client = self  # the bar shows the limit in force and the server's pace

    # ---------------------------------------------------------------- sync face

    def run(self, planned: Iterator[Planned]) -> Iterator[tuple[Planned, dict | None]]:
        """(request, answer or None if it failed) in plan order."""
        started = time.monotonic()
        loop = asyncio.new_event_loop()
        self._setup()
        try:
            if not self.cache_only:
                loop.run_until_complete(self._open())
            self.tasks.add(loop.create_task(self._dispatch(planned)))  # held here: the loop keeps tasks only weakly
            while (ready := loop.run_until_complete(self._next_ready())) is not None:
                yield from ready
        finally:
            self.stats.wall_s += time.monotonic() - started
            self.stats.client = self.figures()
            _shut_down(loop, self.client)

    def _setup(self) -> None:
        self.results: dict[int, tuple[Planned, dict | None]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.next_idx = 0
        self.dispatched = 0
        self.done = False
        self.error: BaseException | None = None
        self.ready = asyncio.Event()
        self.window_sem = asyncio.Semaphore(self.window)
        self.slots = asyncio.Semaphore(self.cfg.concurrency)  # tasks alive: the ceiling; on the wire: self.gate
        self.gate = Gate(self.limit)
        self.in_flight = 0
        self.settled = asyncio.Event()
        self.stopping = False
        self.consumer_idle = False
        self.idle = asyncio.Event()  # the consumer has read everything there is and waits

    def stop_sending(self) -> None:
        """No new requests from now on (cached ones included); what is in flight still finishes.

        Called between two answers by the consumer, outside the event loop; the
        answers still to come are those already on their way, then the iterator ends.
        """
        self.stopping = True
        self.idle.set()

    async def _open(self) -> None:
        import openai

        # No read timeout in the client: waiting is judged by _watched against the
        # server's progress on every request, not by the age of one (see _watched).
        t = self.cfg.timeout_s
        self.client = openai.AsyncOpenAI(
            api_key=self.api_key, base_url=self.cfg.base_url, max_retries=0,  # retries are ours: counted, paced, shared
            timeout=openai.Timeout(connect=t, read=None, write=t, pool=None),
        )

    async def _next_ready(self) -> list | None:
        while True:
            if self.error is not None:
                raise self.error
            if self.next_idx in self.results:
                out = []
                while self.next_idx in self.results:
                    out.append(self.results.pop(self.next_idx))
                    self.next_idx += 1
                    self.window_sem.release()
                return out
            if self.done and self.next_idx >= self.dispatched:
                return None
            self.ready.clear()
            self.consumer_idle = True
            self.idle.set()
            await self.ready.wait()
            self.consumer_idle = False

    # ---------------------------------------------------------------- dispatch

    async def _dispatch(self, planned: Iterator[Planned]) -> None:
        stopped = False
        try:
            for req in planned:
                await self.window_sem.acquire()
                if self.stopping:
                    self._unsent()
                    continue
                answer = self.cache.get(req.key)
                if answer is not None:  # already paid for: served even after a budget stop
                    self.stats.cached += 1
                    self.stats.cost_usd_cached += answer.get("cost_usd", 0.0)
                    self._finish(self._next_index(), req, answer)
                    continue
                if self.cache_only:  # batch mode: what the batch did not answer was counted when collected
                    self._finish(self._next_index(), req, None)
                    continue
                if self.in_step:
                    await self._consumer_caught_up()
                    if self.stopping:
                        self._unsent()
                        continue
                reservation = None if stopped else await self._reserve(req)
                if reservation is None:
                    stopped = True
                    self.stats.budget_stop = 1
                    self._unsent()
                    continue
                await self.slots.acquire()
                if self.stopping:  # stopped while this one waited for a free slot
                    self.slots.release()
                    self.budget.release(reservation[1])
                    self._unsent()
                    continue
                self.stats.sent += 1
                self.in_flight += 1
                task = asyncio.create_task(self._run_one(self._next_index(), req, reservation))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # a bad plan (a broken input file...) ends the run with its message
            self.error = err
        finally:
            self.done = True
            self.ready.set()

    def _unsent(self) -> None:
        self.stats.unsent += 1
        self.window_sem.release()

    async def _consumer_caught_up(self) -> None:
        """Waits until the consumer has read (and acted on) every answer already there.

        Idle means it came back for more and found nothing: everything it took
        before was handled in between, outside the loop. An answer waiting for
        it means it is not idle, whatever the flag says.
        """
        while not self.stopping and not (self.consumer_idle and self.next_idx not in self.results):
            self.idle.clear()
            await self.idle.wait()

    async def _reserve(self, req: Planned) -> tuple[int, float] | None:
        tokens = estimate_tokens(req.body["messages"])
        reservation = self.budget.reserve(tokens)
        # Out of budget with answers still coming: their real cost may leave room.
        while reservation is None and self.in_flight and self.budget.stopped_by == "max_cost_usd":
            self.settled.clear()
            await self.settled.wait()
            reservation = self.budget.reserve(tokens)
        return None if reservation is None else (tokens, reservation)

    def _next_index(self) -> int:
        self.dispatched += 1
        return self.dispatched - 1

    def _finish(self, idx: int, req: Planned, answer: dict | None) -> None:
        self.results[idx] = (req, answer)
        if idx == self.next_idx:
            self.ready.set()
        if self.progress is not None:
            self.progress.advance()

    async def _run_one(self, idx: int, req: Planned, reservation: tuple[int, float]) -> None:
        tokens, cost = reservation
        try:
            try:
                answer = await self._call(req, tokens)
            finally:
                self.slots.release()
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # UserError (bad key, unknown model...): the run stops with it
            self.error = err
            self.ready.set()
            return
        if answer is None:
            self.budget.release(cost)
        else:
            self.budget.settle(cost, answer["cost_usd"])
            self.cache.put(req.key, answer)
        self.in_flight -= 1
        self.settled.set()
        self._finish(idx, req, answer)

    # ---------------------------------------------------------------- one request

    async def _call(self, req: Planned, tokens: int) -> dict | None:
        import openai
        from openai.types.chat import ChatCompletion

        cfg = self.cfg
        reserve_tokens = tokens + cfg.max_tokens
        for attempt in range(cfg.max_retries + 1):
            await self.limiter.acquire(reserve_tokens)
            load = await self.gate.acquire()
            epoch = self.limit.epoch
            sent = time.monotonic()
            self.stats.attempts += 1
            wait = None
            lost = True  # this attempt says "too much load" (timeout, 429, 5xx, dropped)
            try:
                try:
                    # The body is plain JSON we built (and hashed) ourselves; chat.completions.create
                    # would re-walk it through the client's typed transform, ~0.4 ms of CPU a request,
                    # which at 100 ms latency is the difference between keeping up with a bare loop
                    # and not. client.post is the client's own documented way to send a raw body.
                    response = await self._watched(
                        self.client.post("/chat/completions", body=req.body, cast_to=ChatCompletion), sent, load)
                except Stalled:
                    self.stats.abandoned += 1
                    self.limit.lost(epoch)
                    # The server may still work on it (few cancel): its slot stays taken a while.
                    await self.gate.abandon(self._ghost_s())
                    raise
                except BaseException:
                    await self.gate.release()
                    raise
                await self.gate.release()
                self.watch.replied()
                answer = self._answer(req, response)
            except openai.APIStatusError as err:
                self.watch.replied()  # an error reply is still the server at work
                status = err.status_code
                code = _error_code(err)
                if status in (401, 403):
                    raise UserError(
                        f"the API at {self._where()} refused the key in ${cfg.api_key_env} (HTTP {status}); "
                        f"export a valid key in {cfg.api_key_env}"
                    ) from None
                if status == 404:
                    raise UserError(
                        f"synthesize.model {cfg.model!r}: the API at {self._where()} answered 404 (no such model or endpoint); "
                        f"fix synthesize.model or synthesize.base_url"
                    ) from None
                if status == 429 and code == "insufficient_quota":
                    raise UserError(f"the account behind ${cfg.api_key_env} has no quota left (HTTP 429 insufficient_quota); add credit and run again: answers so far are kept") from None
                if status == 429 or status >= 500 or status in (408, 409):
                    reason = "429" if status == 429 else ("5xx" if status >= 500 else str(status))
                    wait = retry_after(err.response.headers)
                    if status == 429:
                        self.limiter.pause(wait if wait is not None else backoff(attempt, cfg.retry_base_s, cfg.retry_max_s, None, self.rng))
                    self.limit.lost(epoch)
                else:
                    return self.stats.fail(f"http_{status}")
            except (openai.APITimeoutError, Stalled):
                reason = "timeout"
            except openai.APIConnectionError as err:
                if self.stats.ok == 0 and (attempt >= 1 or attempt == cfg.max_retries) and _refused(err):
                    raise UserError(
                        f"synthesize.base_url: cannot connect to {self._where()} ({_cause(err)}); "
                        f"start the server or fix synthesize.base_url"
                    ) from None
                reason = "connection"
            except (Garbage, ValueError, openai.APIResponseValidationError):
                reason = "garbage"
                lost = False
            else:
                self.watch.answered()
                self.limit.answered(time.monotonic() - sent, load, epoch)
                await self.gate.wake()  # the limit may have grown
                self.stats.paid(answer)
                self.limiter.settle(reserve_tokens, answer["prompt_tokens"] + answer["completion_tokens"])
                return answer
            if reason == "connection" and lost:
                self.limit.lost(epoch)
            self.watch.last_error = reason
            if attempt == cfg.max_retries:
                if reason in ("timeout", "connection") and self.watch.last_progress < sent:
                    # Not one reply from the server, to any request, while its last try waited.
                    raise UserError(self._silent(reason))
                return self.stats.fail(reason)
            self.stats.retries += 1
            self.stats.retries_by_reason[reason] += 1
            await asyncio.sleep(backoff(attempt, cfg.retry_base_s, cfg.retry_max_s, wait, self.rng))
        return None  # unreachable: the loop returns on its last attempt

    async def _watched(self, call, sent: float, load: int):
        """``call``'s response, or Stalled once the server stopped making progress.

        A request is not late for having waited its turn: while the server keeps
        answering (any request), the one at the back of its queue is alive. It is
        given up on when the server answered nothing for ``timeout_s`` since it
        was sent, or when it waited ``timeout_s`` for each request out ahead of it.
        """
        timeout = self.cfg.timeout_s
        task = asyncio.ensure_future(call)
        try:
            while True:
                now = time.monotonic()
                silent = now - max(self.watch.last_progress, sent)
                left = min(timeout - silent, timeout * max(1, load) - (now - sent))
                if left <= 0:
                    raise Stalled()
                done, _ = await asyncio.wait({task}, timeout=left)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()  # closes the connection: a server that notices stops working on it
                await asyncio.wait({task}, timeout=SHUT_DOWN_S)

    def _ghost_s(self) -> float:
        """How long an abandoned request may still keep the server busy: about one answer's time."""
        latency = self.limit.latency_s
        return min(self.cfg.timeout_s, latency) if latency else self.cfg.timeout_s / 4

    def _silent(self, reason: str) -> str:
        w = self.watch
        now = time.monotonic()
        return (f"the server at {self._where()} (model {self.cfg.model!r}) stopped answering: "
                f"{w.answers} answers in {_span(now - w.started)}, no reply in the last {_span(now - w.last_progress)} "
                f"({self.cfg.max_retries + 1} tries of one request), last error: {reason}. "
                f"Answers so far are kept in .tenny/ and not asked again; check the server "
                f"(or raise synthesize.timeout_s) and run again")

    def figures(self) -> dict:
        """The client's view of the server, for the report (numbers only: DVC metrics)."""
        lim = self.limit
        out = {"concurrency_ceiling": lim.ceiling, "concurrency_final": lim.in_force,
               "concurrency_lowest": max(1, int(min(lim.lowest, lim.limit))),
               "limit_decreases": lim.decreases, "limit_increases": lim.increases}
        if lim.latency_s is not None:
            out["latency_s_median"] = round(lim.latency_s, 3)
        if lim.no_load_s is not None:
            out["latency_s_no_load"] = round(lim.no_load_s, 3)
        rate = self.watch.per_minute()
        if rate is not None:
            out["answers_per_min"] = round(rate, 2)
        return out

    def _answer(self, req: Planned, response) -> dict:
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise Garbage("no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if content is not None and not isinstance(content, str):
            raise Garbage("content is not text")
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
            # some local servers send no usage: estimate, so budget and report stay meaningful
            prompt_tokens = estimate_tokens(req.body["messages"])
            completion_tokens = len(content or "") // 4
        return {
            "content": content or "",
            "finish_reason": getattr(choice, "finish_reason", None),
            "model": getattr(response, "model", None),
            "created": getattr(response, "created", None),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": self.budget.cost(prompt_tokens, completion_tokens),
        }

    def _where(self) -> str:
        return self.cfg.base_url or "https://api.openai.com/v1"


SHUT_DOWN_S = 2.0


def _shut_down(loop: asyncio.AbstractEventLoop, client) -> None:
    """Cancel what is in flight and close the client, also after Ctrl-C broke the loop mid-step.

    A KeyboardInterrupt can leave the run_until_complete future pending; when it
    finishes, it stops the loop under the next run_until_complete, hence the retries.
    Each wait is bounded: a Ctrl-C that lands inside the HTTP stack once left a
    cancelled request that never finished, and the process spun at 100 % CPU
    instead of exiting. Answers are stored as they arrive, so nothing is lost
    by not waiting longer.
    """
    try:
        for _ in range(3):
            pending = list(asyncio.all_tasks(loop))  # only tasks not done
            for task in pending:
                task.cancel()
            try:
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=SHUT_DOWN_S))
                if client is not None:
                    loop.run_until_complete(asyncio.wait_for(client.close(), SHUT_DOWN_S))
                break
            except RuntimeError:
                continue
    except Exception:  # cleanup must not hide the error that ended the run
        pass
    finally:
        loop.close()


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _error_code(err) -> str | None:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("code")
    return getattr(err, "code", None)


def _cause(err: BaseException) -> str:
    cause = err.__cause__ or err.__context__
    text = str(cause or err).strip() or type(cause or err).__name__
    return text.splitlines()[0][:120]


def _refused(err: BaseException) -> bool:
    """Nothing listens there (refused, no such host), as opposed to a dropped connection."""
    cause = err.__cause__ or err.__context__
    while cause is not None:
        if type(cause).__name__ == "ConnectError" or isinstance(cause, (ConnectionRefusedError, socket.gaierror)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
