"""tenny export with export.gguf: llama.cpp's own tools write the files, and llama.cpp runs them.

The reference here is llama.cpp itself (built once per machine into tenny's
cache by the session fixture; CI builds it before the suite): each test model
goes base → LoRA train → merge → GGUF through the stages, then the test asks
llama-server, on loopback, for greedy tokens and compares them with the merged
folder loaded by plain transformers. The models are tiny ones built from a
config (Llama, Qwen2, Gemma 3, GPT-2) with SmolLM2's tokenizer, which
llama.cpp's converter knows.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import UserError
from pipeline.core.params import load_params
from pipeline.core.records import make_record, write_records
from pipeline.engines import gguf_files, llama_cpp
from pipeline.engines.llama_server import serve
from pipeline.stages import base, export, train

SYSTEM = "You are Tenny."
ANSWERS = [f"Printers sense fear, deadline number {i}." for i in range(20)]
PROMPTS = ["Topic 3?", "Topic 11?"]


@pytest.fixture(scope="session")
def llama():
    """llama.cpp from export.llama_cpp's fallbacks: $LLAMA_CPP_DIR, else tenny's build cache (built once)."""
    return llama_cpp.ensure(None)


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (read once from the packaged GGUF, ~7 s), saved as a folder the tests reload fast."""
    from transformers import AutoTokenizer

    from pipeline.engines.modeling import smollm2_gguf

    gguf = smollm2_gguf()
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return folder


def tiny_model(arch: str, vocab: int, bos: int, eos: int):
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**small))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**small))
    if arch == "gemma3":
        return Gemma3ForCausalLM(Gemma3TextConfig(head_dim=16, sliding_window=64, **small))
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common))
    if arch == "opt":  # an architecture llama.cpp's converter does not know
        return OPTForCausalLM(OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                        word_embed_proj_dim=64, max_position_embeddings=512, **common))
    raise AssertionError(arch)


def chats(n: int) -> list[dict]:
    return [make_record(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Topic {i}?"},
                                  {"role": "assistant", "content": ANSWERS[i]}]) for i in range(n)]


def project_params(root: Path, *overrides):
    return load_params(root / "params.yaml", [
        "train.base_model=local-base", "train.max_steps=4", "train.batch_size=4", "train.lr=0.01",
        "train.lora.target_modules=[]", f"build.system_prompt={SYSTEM}", f"eval.prompts={json.dumps(PROMPTS)}",
        "export.check_tokens=16", *overrides])


def pretrain(model, tok, records: list[dict], steps: int = 60):
    """A few full-model steps on the chats, so the base speaks them decisively and ends each turn.

    A random base answers with near-ties everywhere, where f16 rounding may pick either token;
    a base that learned the data leaves clear winners, as real models do.
    """
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in records]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


@functools.lru_cache(maxsize=None)
def tokenizer(folder: Path):
    """One load per folder: a 49k-token tokenizer takes half a second to read, and the checks ask often."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def trained_project(root: Path, arch: str, tokenizer_dir: Path, pretrain_steps: int = 60):
    """A project whose base is a tiny ``arch`` with SmolLM2's tokenizer, and an adapter trained on it."""
    tok = tokenizer(tokenizer_dir)
    records = chats(20)
    asked = [r for r in records if r["messages"][1]["content"] in PROMPTS]
    model = pretrain(tiny_model(arch, len(tok), tok.bos_token_id, tok.eos_token_id), tok, asked, pretrain_steps)
    model.save_pretrained(root / "local-base")
    tok.save_pretrained(root / "local-base")
    write_records(root / "data/final/train.jsonl", records[:16])
    write_records(root / "data/final/val.jsonl", records[16:])
    p = project_params(root)
    base.run(p)
    train.run(p)


def greedy_transformers(folder: Path, prompt: str, n: int) -> tuple[list[int], str]:
    """The merged folder as any user loads it, its own generation_config deciding where to stop."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = tokenizer(folder)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    ends = model.generation_config.eos_token_id
    ends = ends if isinstance(ends, list) else [ends]
    return [t for t in new if t not in ends], tok.decode(new, skip_special_tokens=True)


def prompt_ids(folder: Path, text: str) -> list[int]:
    return tokenizer(folder)(text, add_special_tokens=False)["input_ids"]


def rendered(folder: Path, messages: list[dict]) -> str:
    return tokenizer(folder).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def trained_llama(tmp_path_factory, smollm2_tokenizer_dir):
    """A tiny Llama project with its adapter, trained once for the module; tests copy it."""
    root = tmp_path_factory.mktemp("llama-project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        trained_project(root, "llama", smollm2_tokenizer_dir)
    return root


@pytest.fixture
def llama_project(trained_llama, in_tmp):
    shutil.copytree(trained_llama, in_tmp, dirs_exist_ok=True)
    return in_tmp


def check_f16_in_llama_cpp(root: Path, llama) -> Path:
    """The f16 file answers every prompt as the merged folder does in plain transformers, and stops there."""
    files = sorted((root / "models/gguf").glob("*-f16.gguf"))
    assert len(files) == 1 and files[0].name.startswith("local-base-")
    f16 = files[0]
    merged = root / "models/merged"
    with serve(llama, f16) as server:
        # llama.cpp renders the file's own template: a chat without a system turn gets the trained one.
        asked = [{"role": "user", "content": "Topic 3?"}]
        assert server.apply_template(asked) == rendered(merged, [{"role": "system", "content": SYSTEM}] + asked)
        for prompt in PROMPTS:
            text = rendered(merged, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])
            want, said = greedy_transformers(merged, text, 16)
            ids = prompt_ids(merged, text)
            assert server.tokenize(text, add_special=False) == ids  # llama.cpp's tokenizer agrees
            got = server.complete(ids, 16)
            assert got.stopped and got.tokens[:len(want)] == want, (prompt, said, got.text)
            assert len(got.tokens) <= len(want) + 1  # at most the end token itself after the answer
            assert len(want) >= 3  # an answer, not an immediate turn end: the comparison means something
    meta = gguf_files.metadata(f16)
    assert meta["eos"] == "<|im_end|>" and meta["bos"] == "<|im_start|>"
    report = json.loads((root / "reports/export.json").read_text())
    figures = report["files"][f16.name]
    assert figures["identical"] == 1.0 and figures["stops_at_turn_end"] and figures["prompt_tokens_identical"]
    assert figures["bytes"] == f16.stat().st_size and figures["tokens_per_s"] > 0
    return f16


async def test_llama_f16_and_quantized_files_written_checked_and_served(llama_project, llama):
    assert export.run(project_params(llama_project, "export.gguf=[f16, q8_0, q4_k_m]")) == 0
    f16 = check_f16_in_llama_cpp(llama_project, llama)
    names = sorted(p.name for p in (llama_project / "models/gguf").iterdir())
    run = f16.name.removesuffix("-f16.gguf")
    assert names == sorted(["Modelfile", f"{run}-f16.gguf", f"{run}-q8_0.gguf", f"{run}-q4_k_m.gguf"])
    assert gguf_files.metadata(llama_project / f"models/gguf/{run}-q4_k_m.gguf")["eos"] == "<|im_end|>"
    report = json.loads((llama_project / "reports/export.json").read_text())
    assert set(report["files"]) == set(names) - {"Modelfile"} and report["failed"] == []
    sizes = {t: report["files"][f"{run}-{t}.gguf"]["bytes"] for t in ("f16", "q8_0", "q4_k_m")}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]
    modelfile = (llama_project / "models/gguf/Modelfile").read_text()
    assert f"\nFROM ./{f16.name}\n" in modelfile and 'SYSTEM "You are Tenny."' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "\nFROM .\n" in (llama_project / "models/merged/Modelfile").read_text()  # the folder keeps its own

    # tenny chat --gguf: the file through llama-server's chat endpoint, no system turn sent: the file's
    # template brings the trained one, so the reply is the merged model's greedy answer to the same chat.
    import io

    from pipeline.commands.chat import gguf_chat
    from pipeline.engines.chat_session import Sampling

    out = io.StringIO()
    p = project_params(llama_project)
    gguf_chat(p, str(llama_project / f"models/gguf/{run}-f16.gguf"), "Topic 3?", Sampling(temperature=0, max_new_tokens=16), out)
    text = rendered(llama_project / "models/merged", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Topic 3?"}])
    _, said = greedy_transformers(llama_project / "models/merged", text, 16)
    assert out.getvalue() == f"── {run}-f16.gguf (llama.cpp) ──\n{said.strip()}\n"

    # The chat screen hears the same file: g switches from the Python models to each GGUF in turn.
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_app import plain, wait_for

    from tui.chat_app import ChatApp

    app = ChatApp(llama_project, p, sampling=Sampling(temperature=0, max_new_tokens=16),
                  gguf=llama_project / f"models/gguf/{run}-f16.gguf")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.chat
        await wait_for(pilot, lambda: screen.state != "loading", what="llama-server to start")
        assert screen.state == "ready", plain(screen.query_one("#chat-status"))
        assert not screen.query_one("#chat-base-pane").display and screen.query_one("#chat-gguf-pane").display
        assert screen.query_one("#chat-gguf-pane").border_title == f"{run}-f16.gguf (llama.cpp)"
        await pilot.press("i", *"Topic 3?", "enter")
        await wait_for(pilot, lambda: not screen.generating, what="the file's answer")
        assert plain(screen.query_one("#chat-gguf")) == f"you: Topic 3?\n{said.strip()}"
        server = screen.session.server
        await pilot.press("escape", "g")  # the next file: another llama-server, the first one stopped
        await wait_for(pilot, lambda: screen.state != "loading", what="the next file")
        assert screen.gguf.name == f"{run}-q4_k_m.gguf" and screen.session.server is not server
        assert plain(screen.query_one("#chat-gguf")) == ""
        import requests

        with pytest.raises(requests.ConnectionError):
            requests.get(server.url + "/health", timeout=2)
        while screen.gguf is not None:  # past the last file: the Python models again
            await pilot.press("g")
            await wait_for(pilot, lambda: screen.state != "loading", what="the next model")
        assert screen.query_one("#chat-base-pane").display and not screen.query_one("#chat-gguf-pane").display


def test_lora_gguf_on_the_base_gguf_answers_as_the_merged_model(llama_project, llama, tmp_path):
    """llama-server --lora: the adapter file over the base's own GGUF says what the merged folder says."""
    assert export.run(project_params(llama_project, "export.gguf=[]", "export.gguf_adapter=true")) == 0
    lora = next((llama_project / "models/gguf").glob("*-lora-f16.gguf"))
    assert json.loads((llama_project / "reports/export.json").read_text())["adapter"]["file"] == lora.name
    base_gguf = gguf_files.convert(llama, llama_project / "local-base", tmp_path / "base-f16.gguf", "f16").path
    merged = llama_project / "models/merged"
    with serve(llama, base_gguf, lora=lora) as server:
        for prompt in PROMPTS:
            text = rendered(merged, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])
            want, said = greedy_transformers(merged, text, 16)
            got = server.complete(prompt_ids(merged, text), 16)
            assert got.stopped and got.tokens[:len(want)] == want, (prompt, said, got.text)


# Not here: Qwen2 with SmolLM2's tokenizer (transformers 5 loads it as Qwen2's tokenizer class, whose
# pre-tokenizer llama.cpp's converter then does not recognise), and Gemma 3, whose f16 file in this
# llama.cpp leaves the merged model's greedy answer by 0.35 logits (the export check refuses it).
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2"])
def test_other_architectures_f16_answers_as_merged_in_llama_cpp(arch, in_tmp, llama, smollm2_tokenizer_dir):
    trained_project(in_tmp, arch, smollm2_tokenizer_dir)
    assert export.run(project_params(in_tmp, "export.gguf=[f16]")) == 0
    check_f16_in_llama_cpp(in_tmp, llama)


def test_architecture_llama_cpp_cannot_convert_gets_one_line(in_tmp, llama, smollm2_tokenizer_dir, capsys):
    trained_project(in_tmp, "opt", smollm2_tokenizer_dir, pretrain_steps=0)  # it never answers: no need to teach it
    capsys.readouterr()
    assert export.run(project_params(in_tmp, "export.gguf=[f16]")) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "GGUF" in ln]
    assert len(lines) == 1 and "llama.cpp cannot convert OPTForCausalLM" in lines[0], err
    assert (in_tmp / "models/merged/model.safetensors").exists()
    assert list((in_tmp / "models/gguf").iterdir()) == []
    assert "OPTForCausalLM" in json.loads((in_tmp / "reports/export.json").read_text())["skipped"]


def test_no_llama_cpp_and_no_way_to_build_it(llama_project, monkeypatch, tmp_path):
    (llama_project / "models/gguf").mkdir(parents=True)
    (llama_project / "models/gguf/old-f16.gguf").write_text("an earlier export")
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no cmake, no compiler
    with pytest.raises(UserError) as err:
        export.run(project_params(llama_project, "export.gguf=[q4_k_m]"))
    message = str(err.value)
    assert "\n" not in message
    assert all(s in message for s in ("export.llama_cpp", "LLAMA_CPP_DIR", "export.gguf: []", "cmake"))
    assert (llama_project / "models/merged/model.safetensors").exists()  # the safetensors export is written
    assert (llama_project / "models/gguf/old-f16.gguf").read_text() == "an earlier export"


def test_llama_cpp_folder_without_binaries_is_named(llama_project):
    (llama_project / "fake").mkdir()
    (llama_project / "fake/convert_hf_to_gguf.py").write_text("")
    with pytest.raises(UserError, match=r"export.llama_cpp: fake has no built llama-quantize / llama-server"):
        export.run(project_params(llama_project, "export.gguf=[f16]", "export.llama_cpp=fake"))


def test_unknown_gguf_type_lists_the_allowed(in_tmp):
    with pytest.raises(UserError, match=r"export.gguf: .*unknown GGUF type q4_km; allowed: f16, bf16, f32, q8_0"):
        load_params(in_tmp / "params.yaml", ["export.gguf=[f16, q4_km]"])


def test_kill_mid_conversion_leaves_previous_gguf_folder_whole(llama_project, llama, monkeypatch):
    (llama_project / "models/gguf").mkdir(parents=True)
    (llama_project / "models/gguf/old-f16.gguf").write_text("an earlier export")

    def killed(llama, merged, out, outtype):
        out.write_bytes(b"GGUF" + bytes(1000))  # the converter had written part of its file
        raise KeyboardInterrupt  # when the user pressed Ctrl-C

    monkeypatch.setattr(gguf_files, "convert", killed)
    with pytest.raises(KeyboardInterrupt):
        export.run(project_params(llama_project, "export.gguf=[f16, q4_k_m]"))
    assert [p.name for p in (llama_project / "models").iterdir() if p.name.startswith(".gguf")] == []
    assert [p.name for p in (llama_project / "models/gguf").iterdir()] == ["old-f16.gguf"]


def test_gguf_off_needs_no_llama_cpp_and_leaves_only_a_note(llama_project, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    (llama_project / "models/gguf").mkdir(parents=True)
    (llama_project / "models/gguf/old-f16.gguf").write_text("of an earlier export.gguf setting")
    assert export.run(project_params(llama_project)) == 0
    # no file of the earlier setting; a note saying how to ask for files (DVC warns about an empty output)
    assert [p.name for p in (llama_project / "models/gguf").iterdir()] == ["README.md"]
    assert "export.gguf" in (llama_project / "models/gguf/README.md").read_text()
    assert json.loads((llama_project / "reports/export.json").read_text())["files"] == {}


async def test_eval_screen_shows_each_gguf_file_as_llama_cpp_ran_it(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_app import on_screen
    from test_eval_screen import SIZE, eval_app, flat, loaded, write_reports

    root = write_reports(tmp_path)
    (root / "reports/export.json").write_text(json.dumps({
        "name": "smollm2-1a2b3c4d", "check_tokens": 32, "prompts": 5, "merged": {"tokens_per_s": 21.5, "stopped": 4},
        "files": {
            "smollm2-1a2b3c4d-f16.gguf": {"type": "f16", "bytes": 271 * 2**20, "tokens_per_s": 48.2, "identical": 1.0,
                                          "prompts": 5, "first_divergence": None, "stopped": 4},
            "smollm2-1a2b3c4d-q4_k_m.gguf": {"type": "q4_k_m", "bytes": 101 * 2**20, "tokens_per_s": 120.4,
                                             "identical": 0.6, "prompts": 5, "stopped": 4,
                                             "first_divergence": {"prompt": "Airports?", "token": 7}}},
        "failed": []}))
    app = eval_app(root)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app.screen)
        await pilot.pause(0.2)
        drawn = flat(on_screen(app))
    assert "merged model in transformers 21.5 tok/s" in drawn
    assert "smollm2-1a2b3c4d-f16.gguf: 271.0 MiB · 100% as merged · stops 4/5 · 48.2 tok/s" in drawn
    assert "q4_k_m.gguf: 101.0 MiB · 60% as merged · stops 4/5 · 120.4 tok/s · differs at token 7" in drawn


@pytest.mark.slow
def test_f16_file_that_answers_otherwise_fails_the_stage_naming_file_and_prompt(in_tmp, llama, smollm2_tokenizer_dir):
    """A tiny Gemma 3: this llama.cpp's f16 file leaves the merged model's greedy answer (by 0.35 logits)."""
    trained_project(in_tmp, "gemma3", smollm2_tokenizer_dir)
    (in_tmp / "models/gguf").mkdir(parents=True)
    (in_tmp / "models/gguf/old-f16.gguf").write_text("an earlier export")
    with pytest.raises(UserError, match=r"models/gguf/local-base-\w+-f16.gguf: in llama.cpp its greedy answer to "
                                        r"'Topic \d+\?' leaves the merged model's at token \d+ .*models/gguf/ was "
                                        r"left as it was"):
        export.run(project_params(in_tmp, "export.gguf=[f16]"))
    assert [p.name for p in (in_tmp / "models/gguf").iterdir()] == ["old-f16.gguf"]
    report = json.loads((in_tmp / "reports/export.json").read_text())
    assert report["failed"] and next(iter(report["files"].values()))["identical"] < 1


def test_header_reader_reads_what_gguf_py_reads(tmp_path):
    """gguf_files.read_fields against gguf-py's own GGUFReader, on a file gguf-py's writer made."""
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    path = tmp_path / "fields.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny é ✓")
    writer.add_context_length(512)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<|im_start|>", "<|im_end|>", "héllo", "", "✓"] * 50)
    writer.add_token_scores([0.5, -1.25, 3.0, 0.0, 2.5] * 50)
    writer.add_token_types([1, 3, 1, 1, 6] * 50)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.add_key_value("test.i64", -(2**40), writer_types().INT64)
    writer.add_key_value("test.f64", 1.5, writer_types().FLOAT64)
    writer.add_key_value("test.nested", [[1, 2], [3]], writer_types().ARRAY)
    writer.add_tensor("w", np.ones((2, 3), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = GGUFReader(path)
    want = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    got = gguf_files.read_fields(path)
    assert got.keys() == want.keys()
    assert got.pop("test.nested") == [[1, 2], [3]]  # as written: GGUFReader.contents() flattens nested arrays
    del want["test.nested"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value) if isinstance(value, float) else got[key] == value, key
    meta = gguf_files.metadata(path)
    assert (meta["bos"], meta["eos"], meta["eot"], meta["add_bos"]) == ("<|im_start|>", "<|im_end|>", None, False)
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut short"):
        gguf_files.read_fields(tmp_path / "cut.gguf")


def writer_types():
    from gguf import GGUFValueType

    return GGUFValueType
