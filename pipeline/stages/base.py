"""Stage base: ``train.base_model`` made into models/base/, once, cached by DVC.

GGUF weights (the packaged SmolLM2) take ~15 s to dequantize and transformers
will not ``save_pretrained`` a GGUF-loaded model; so this stage loads once,
drops the GGUF quantization config, moves the weights into a model built from
the config and saves a plain folder that reloads in under a second.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.params import Params
from pipeline.engines.modeling import BASE_INFO, BaseSource, quiet_libraries, replace_dir


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """gguf-py's reader and name map, each made once while transformers converts.

    transformers opens the file three times (tokenizer, config, weights), and
    gguf-py's reader parses every metadata field element by element: 3-4 s per
    opening for a 49k-token vocabulary. It also builds gguf-py's tensor-name
    map again for each of the ~400 tensors. Both are read-only and depend only
    on their arguments, so one of each serves the whole conversion (8 of its
    25 s on 2 cores). Only for this block: gguf-py is as it was afterwards.
    """
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def convert_gguf(gguf: Path, out: Path) -> None:
    with _gguf_read_once():
        _convert_gguf(gguf, out)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the meta device: random weights for 135M parameters take seconds, and every one is replaced.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    plain.tie_weights()  # a tied lm_head (listed missing) points at the loaded embeddings again
    # Tied output embeddings show up as "missing"; anything else is a real mismatch.
    real_missing = [k for k in missing if "lm_head" not in k]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={real_missing[:5]} unexpected={unexpected[:5]}")
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def make_tiny(params: Params, out: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    t = params.train.tiny
    torch.manual_seed(t.seed)
    config = GPT2Config(vocab_size=t.vocab_size, n_positions=t.n_positions,
                        n_embd=t.n_embd, n_layer=t.n_layer, n_head=t.n_head,
                        bos_token_id=0, eos_token_id=0, pad_token_id=1,
                        # No dropout in the frozen base (as in Llama-class bases): LoRA's own dropout is the
                        # only noise, so one process and N processes take the same steps.
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(out)


def run(params: Params, args: Any = None) -> int:
    name = params.train.base_model
    src = BaseSource.parse(name)
    final = paths.BASE_DIR
    with replace_dir(final, prefix=".base.") as tmp:
        info = {"kind": src.kind, "source": src.source, "source_name": name}
        if src.kind == "gguf":
            print(f"base: converting {src.source} (GGUF) to a transformers folder ...")
            convert_gguf(Path(src.source), tmp)
            info["source"] = Path(src.source).name  # not an absolute path: dvc.lock stays portable
        elif src.kind == "tiny":
            make_tiny(params, tmp)
            info["tiny"] = params.train.tiny.model_dump()
        (tmp / BASE_INFO).write_text(json.dumps(info, indent=2) + "\n")
    print(f"base: {name} → {final}/ ({src.kind})")
    return 0
