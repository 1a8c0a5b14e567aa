"""QLoRA export merges in float32, whatever dtype the base was saved in.

A hub base usually ships in bfloat16. Loaded in 4-bit, bitsandbytes decodes
its weights back into bfloat16, and a merge there rounds every weight to 8 bits
of mantissa (1e-3 off on these weights; float32 rounding is below 1e-6). The reference
here is the float32 merge done by hand: each 4-bit weight decoded to float32,
plus scaling * B @ A from the saved adapter, summed in float64.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pipeline.core.params import load_params
from pipeline.engines.modeling import load_base_model, train_tiny_tokenizer
from pipeline.stages import base, export

R, ALPHA = 4, 8


@pytest.fixture
def bf16_qlora_project(in_tmp):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4)).to(torch.bfloat16).save_pretrained(
        in_tmp / "llama-bf16")
    assert json.loads((in_tmp / "llama-bf16/config.json").read_text())["dtype"] == "bfloat16"
    train_tiny_tokenizer(["printers sense fear"] * 4, vocab_size=300).save_pretrained(in_tmp / "llama-bf16")
    p = load_params("params.yaml", ["train.base_model=llama-bf16", "train.quantization=4bit", "export.ollama=false"])
    base.run(p)
    # An adapter as QLoRA training leaves it: LoRA on the 4-bit base, B not zero (as after some steps).
    torch.manual_seed(1)
    lora = get_peft_model(load_base_model(in_tmp / "models/base", "4bit", "cpu"),
                          LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(in_tmp / "models/adapter")
    (in_tmp / "models/adapter/training.json").write_text(json.dumps({"base_model": "llama-bf16", "quantization": "4bit"}))
    return in_tmp, p


def float32_reference(root) -> dict[str, torch.Tensor]:
    """The merged weights computed by hand, in float64, from the 4-bit base and the adapter."""
    import bitsandbytes.functional as bnbf
    from safetensors.torch import load_file

    quantized = load_base_model(root / "models/base", "4bit", "cpu")
    lora = load_file(str(root / "models/adapter/adapter_model.safetensors"))
    out = {}
    for name, module in quantized.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        state = getattr(weight, "quant_state", None)
        if state is not None:
            state = copy.deepcopy(state)
            state.dtype = torch.float32
            w = bnbf.dequantize_4bit(weight.data, state).double()
        else:
            w = weight.detach().double()  # bfloat16 norms and embeddings: exact in float32
        a = lora.get(f"base_model.model.{name}.lora_A.weight")
        if a is not None:
            b = lora[f"base_model.model.{name}.lora_B.weight"]
            w = w + (b.double() @ a.double()) * (ALPHA / R)
        out[f"{name}.weight"] = w
    return out


def test_a_bfloat16_base_loaded_in_4bit_is_merged_in_float32(bf16_qlora_project):
    from safetensors.torch import load_file

    root, p = bf16_qlora_project
    assert export.run(p) == 0
    merged = load_file(str(root / "models/merged/model.safetensors"))
    assert {t.dtype for t in merged.values()} == {torch.float32}
    reference = float32_reference(root)
    assert "model.layers.0.self_attn.q_proj.weight" in merged
    worst = max((merged[k].double() - reference[k]).abs().max().item() for k in merged)
    # float32 rounding of the sum only; the bfloat16 merge is 1e-3 off here.
    assert worst < 1e-6, worst
