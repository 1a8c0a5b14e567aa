"""llama.cpp: found where the user keeps it, or fetched and built once per machine.

tenny calls llama.cpp's own tools (``convert_hf_to_gguf.py``,
``convert_lora_to_gguf.py``, ``llama-quantize``, ``llama-server``) and never
rewrites them. Where they come from, first match wins:

1. ``export.llama_cpp``: a llama.cpp folder (a checkout built with
   ``cmake -B build``: converters at its top, binaries in ``build/bin``);
2. ``$LLAMA_CPP_DIR``: the same, from the environment;
3. the build cache, ``${XDG_CACHE_HOME:-~/.cache}/tenny/llama.cpp/<version>/``,
   shared by every tenny project of this user: the source distribution of
   ``llama-cpp-python`` on PyPI (the registry tenny installs from) carries
   llama.cpp's source and converters, so ``pip download`` plus CMake build it
   with no other download. A file lock keeps two builds from colliding; the
   build is marked done only once every binary exists, so a killed build is
   resumed (CMake rebuilds only what is missing), never used half-made.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError

# The llama-cpp-python release whose sdist carries the llama.cpp tenny builds (vendor/llama.cpp).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# What tenny runs; llama-cli is built for the README's `llama-cli -m` line.
TARGETS = ("llama-quantize", "llama-server", "llama-cli")
NEEDED = ("llama-quantize", "llama-server")
BUILT_MARK = "tenny-build.json"
# Folders of the sdist's llama.cpp that no target needs (test vocabularies, docs): not unpacked.
_SKIP = {"models", "docs", "media", ".devops", ".github", "benches"}


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tenny" / "llama.cpp"


def build_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache_root() / version


@dataclass(frozen=True)
class LlamaCpp:
    """One llama.cpp: a source folder with the converters and a folder with the binaries."""

    root: Path
    bin_dir: Path
    origin: str  # what pointed at it, for messages: export.llama_cpp, LLAMA_CPP_DIR or the build cache

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def convert_hf(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def convert_lora(self) -> Path:
        return self.root / "convert_lora_to_gguf.py"

    def python_env(self) -> dict[str, str]:
        """Environment for the converters: they import the gguf-py beside them, not an installed one."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.root / "gguf-py"), env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        return env


def _bin_dir(root: Path) -> Path | None:
    for candidate in (root / "build" / "bin", root / "bin", root):
        if all((candidate / name).is_file() for name in NEEDED):
            return candidate
    return None


def from_folder(folder: Path, origin: str) -> LlamaCpp:
    """The llama.cpp in ``folder``, or a UserError saying what it lacks."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise UserError(f"{origin}: {folder}: no such folder (a llama.cpp checkout built with "
                        "`cmake -B build && cmake --build build`)")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"{origin}: {folder} has no convert_hf_to_gguf.py: point it at the top of a llama.cpp checkout")
    bins = _bin_dir(folder)
    if bins is None:
        raise UserError(f"{origin}: {folder} has no built {' / '.join(NEEDED)} in build/bin or bin: build it with "
                        f"`cmake -B build && cmake --build build --target {' '.join(NEEDED)}`")
    return LlamaCpp(folder, bins, origin)


def cached(version: str = LLAMA_CPP_PYTHON_VERSION) -> LlamaCpp | None:
    root = build_dir(version)
    if not (root / "build" / BUILT_MARK).is_file():
        return None
    bins = _bin_dir(root)
    return LlamaCpp(root, bins, f"the build cache ({root})") if bins else None


def locate(configured: str | None) -> LlamaCpp | None:
    """export.llama_cpp, then $LLAMA_CPP_DIR, then a finished build in the cache; None if none."""
    if configured:
        return from_folder(Path(configured), "export.llama_cpp")
    if os.environ.get("LLAMA_CPP_DIR"):
        return from_folder(Path(os.environ["LLAMA_CPP_DIR"]), "LLAMA_CPP_DIR")
    return cached()


def missing_message(why: str) -> str:
    return (f"llama.cpp is needed for export.gguf but {why}; set export.llama_cpp (or LLAMA_CPP_DIR) to a built "
            "llama.cpp folder, run `tenny llama-cpp` to build one, or set export.gguf: [] to skip GGUF files")


def ensure(configured: str | None, build: bool = True) -> LlamaCpp:
    """The llama.cpp to use, building it into the cache when none is found and ``build`` allows."""
    found = locate(configured)
    if found is not None:
        return found
    if not build:
        raise UserError(missing_message("none is built"))
    return build_cached()


# ---------------------------------------------------------------- the build


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock: a second build (another project, another shell) waits for the first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"llama.cpp: another build holds {path}; waiting for it ...", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tools_missing(why: str) -> UserError:
    return UserError(missing_message(why))


def build_cached(version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int | None = None, native: bool | None = None) -> LlamaCpp:
    """Fetch llama-cpp-python's sdist and build llama.cpp's tools into the shared cache (once)."""
    root = build_dir(version)
    with _locked(cache_root() / f"{version}.lock"):
        done = cached(version)
        if done is not None:  # built by whoever held the lock before us
            return done
        for tool in ("cmake",):
            if shutil.which(tool) is None:
                raise _tools_missing(f"building it needs {tool}, which is not installed (apt install cmake g++)")
        if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
            raise _tools_missing("building it needs a C++ compiler, and none is installed (apt install g++)")
        started = time.monotonic()
        if not (root / "CMakeLists.txt").is_file():
            _fetch_source(version, root)
        # Portable by default (AVX2 on x86-64, no AMX/AVX-512): a CPU may advertise instructions its
        # VM traps (llama-server died of SIGILL on q8_0 under -march=native in a Firecracker VM), and
        # the cache may be shared by machines. TENNY_LLAMA_CPP_NATIVE=1 builds for this CPU only.
        native = os.environ.get("TENNY_LLAMA_CPP_NATIVE", "0") == "1" if native is None else native
        _cmake_build(root, jobs or os.cpu_count() or 2, native)
        seconds = time.monotonic() - started
        (root / "build" / BUILT_MARK).write_text(json.dumps(
            {"llama_cpp_python": version, "targets": list(TARGETS), "native": native,
             "seconds": round(seconds, 1)}, indent=2) + "\n")
        print(f"llama.cpp: built in {seconds / 60:.1f} min → {root / 'build' / 'bin'}", file=sys.stderr)
    found = cached(version)
    assert found is not None
    return found


def _fetch_source(version: str, root: Path) -> None:
    """llama.cpp's source out of the llama-cpp-python sdist, unpacked beside ``root`` and moved in whole."""
    print(f"llama.cpp: fetching the llama-cpp-python=={version} source distribution (~75 MB) from the package "
          "registry ...", file=sys.stderr)
    downloads = root.parent / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sdist = downloads / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                               f"llama-cpp-python=={version}", "-d", str(downloads)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not sdist.is_file():
            last = (proc.stderr.strip().splitlines() or ["pip download failed"])[-1]
            raise _tools_missing(f"fetching llama-cpp-python=={version} failed ({last})")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(prefix=".src.", dir=root.parent))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                if not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix):]
                if rel.split("/", 1)[0] in _SKIP:
                    continue
                member.name = rel
                members.append(member)
            tar.extractall(tmp, members=members, filter="data")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")  # make's "[ 42%] Building ..."
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")  # ninja's "[12/80] Building ..."


def _run_logged(cmd: list[str], log, bar=None) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if bar is not None:
            if m := _PERCENT.match(line):
                bar.n = int(m[1])
            elif m := _NINJA.match(line):
                bar.n = int(100 * int(m[1]) / max(int(m[2]), 1))
            else:
                continue
            bar.refresh()
    if proc.wait() != 0:
        log.flush()
        raise _tools_missing(f"building it failed ({' '.join(cmd[:3])} …; the log is {log.name})")


def _cpu_flags(native: bool) -> list[str]:
    """x86-64-v3 (AVX2, FMA, F16C, BMI2) unless native: what nearly every x86 machine of the last decade runs.

    Stated, not left to ggml's defaults: a build folder configured natively once keeps them all OFF.
    """
    import platform

    if native or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    return [f"-DGGML_{flag}=ON" for flag in ("AVX", "AVX2", "FMA", "F16C", "BMI2")] + ["-DGGML_AVX512=OFF"]


def _cmake_build(root: Path, jobs: int, native: bool) -> None:
    from tqdm import tqdm

    build = root / "build"
    build.mkdir(exist_ok=True)
    # Ninja counts the steps of every target at once: one bar. A build folder keeps its generator.
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not (build / "CMakeCache.txt").exists() else []
    with open(build / "tenny-build.log", "a", encoding="utf-8") as log:
        print(f"llama.cpp: configuring with CMake (log: {log.name}) ...", file=sys.stderr)
        _run_logged(["cmake", "-S", str(root), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                     f"-DGGML_NATIVE={'ON' if native else 'OFF'}", *_cpu_flags(native), "-DLLAMA_CURL=OFF",
                     "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"], log)
        cache = (build / "CMakeCache.txt").read_text(errors="replace")
        ninja = bool(re.search(r"^CMAKE_GENERATOR:INTERNAL=Ninja", cache, re.MULTILINE))
        # make's [NN%] restarts for each target: one target at a time, each with its own bar.
        batches = [list(TARGETS)] if ninja else [[t] for t in TARGETS]
        for i, targets in enumerate(batches, 1):
            what = ", ".join(targets) + ("" if len(batches) == 1 else f" ({i}/{len(batches)})")
            with tqdm(total=100, desc=f"llama.cpp: building {what}, -j{jobs}, once per machine", unit="%",
                      file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") as bar:
                _run_logged(["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs),
                             "--target", *targets], log, bar)
                bar.n = 100
                bar.refresh()
