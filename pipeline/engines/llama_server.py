"""llama-server on loopback: a GGUF file answering as llama.cpp answers.

The export stage checks each GGUF through it (greedy completions, their token
ids and speed); ``tenny chat --gguf`` streams chat replies from it. One server
per file, on 127.0.0.1 and a free port, stopped when the ``with`` block ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.engines.llama_cpp import LlamaCpp

START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Completion:
    tokens: list[int]
    text: str
    stopped: bool  # ended on an end-of-generation token (not the n_predict limit)
    predicted_n: int
    predicted_ms: float


@dataclass
class LlamaServer:
    url: str
    model: Path

    def _post(self, path: str, body: dict, timeout: float = 600.0) -> dict:
        import requests

        resp = requests.post(self.url + path, json=body, timeout=timeout)
        if resp.status_code != 200:
            raise UserError(f"llama-server ({self.model.name}) {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def complete(self, prompt: str | list[int], n_predict: int) -> Completion:
        """Greedy: only top-k with k = 1, no penalties, no cached prompt (results must not depend on order)."""
        out = self._post("/completion", {
            "prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "top_k": 1, "samplers": ["top_k"],
            "repeat_penalty": 1.0, "cache_prompt": False, "return_tokens": True, "seed": 0})
        timings = out.get("timings", {})
        return Completion(list(out.get("tokens", [])), out.get("content", ""), out.get("stop_type") == "eos",
                          int(timings.get("predicted_n", len(out.get("tokens", [])))),
                          float(timings.get("predicted_ms", 0.0)))

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids as a /completion prompt string is tokenized (BOS added where the GGUF says so)."""
        return list(self._post("/tokenize", {"content": text, "add_special": add_special,
                                             "parse_special": True})["tokens"])

    def apply_template(self, messages: list[dict]) -> str:
        """The GGUF's own chat template rendered by llama.cpp (with a generation prompt)."""
        return self._post("/apply-template", {"messages": messages})["prompt"]

    def stream_chat(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0, *,
                    top_p: float = 1.0, end: dict | None = None) -> Iterator[str]:
        """A chat reply as it is generated (the OpenAI-style endpoint, the GGUF's template and stops).

        ``end``, when given, receives ``finish_reason`` ("stop" at a stop token, "length" at
        ``max_tokens``) and ``tokens`` (the answer's length in tokens) once the reply is complete.
        Closing the iterator early closes the connection, and llama-server stops generating.
        """
        import requests

        body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                "stream": True, "stream_options": {"include_usage": True}}
        if temperature == 0:
            body["top_k"] = 1  # greedy, as the export check and eval answer
        with requests.post(self.url + "/v1/chat/completions", json=body, stream=True, timeout=600) as resp:
            if resp.status_code != 200:
                raise UserError(f"llama-server ({self.model.name}): HTTP {resp.status_code}: {resp.text[:300]}")
            for line in resp.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data.strip() == "[DONE]":
                    return
                chunk = json.loads(data)
                if end is not None and chunk.get("usage"):
                    end["tokens"] = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices", []):
                    if end is not None and choice.get("finish_reason"):
                        end["finish_reason"] = choice["finish_reason"]
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece


@contextmanager
def serve(llama: LlamaCpp, model: Path, lora: Path | None = None, threads: int | None = None) -> Iterator[LlamaServer]:
    """llama-server for ``model`` on loopback until the block ends; a UserError if it cannot start."""
    import requests

    port = _free_port()
    cmd = [str(llama.tool("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-c", "0", "-np", "1", "--no-webui", "-t", str(threads or os.cpu_count() or 2)]
    if lora is not None:
        cmd += ["--lora", str(lora)]
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    lines = [ln for ln in log.read().splitlines() if ln.strip()]
                    why = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
                    raise UserError(f"{model}: llama-server could not load it ({why.strip()[:300]})")
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise UserError(f"{model}: llama-server did not start within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
            yield LlamaServer(url, model)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
