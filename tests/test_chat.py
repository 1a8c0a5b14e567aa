"""Chat with the base and the adapter: the engine streams and stops, the screen shows
answers as they are written (as text, never markup) at 80×24, and `tenny chat --prompt`
prints both answers.

Two tiny projects, built once: "random" (a random tiny GPT-2 and a random LoRA, so
the two sides answer differently) and "echo", whose final layer norm is zeroed so the
model writes one token forever: " [bold]x[/bold]", an added token. That makes a reply
that is Rich markup, and an answer long enough to stop with Esc.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_app import on_screen, plain, wait_for  # noqa: E402

from pipeline.cli import main  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import load_params  # noqa: E402
from pipeline.engines.chat_session import ChatSession, Sampling  # noqa: E402
from pipeline.engines.modeling import train_tiny_tokenizer  # noqa: E402
from pipeline.stages import base  # noqa: E402
from tui.chat_app import ChatApp  # noqa: E402

pytestmark = pytest.mark.timeout(180)

SYSTEM = "You are Tenny."
MARKUP = " [bold]x[/bold]"
TEXTS = [f"User: Topic {i}?\nAssistant: printers sense fear, deadline {i}." for i in range(30)]
PARAMS_YAML = f"""\
build:
  system_prompt: "{SYSTEM}"
train:
  base_model: tiny
  device: cpu
  tiny:
    n_positions: 4096
eval:
  no_repeat_ngram_size: 0
"""
GREEDY = Sampling(temperature=0, max_new_tokens=12)


def build_project(root: Path, echo: bool) -> Path:
    from peft import LoraConfig, get_peft_model
    from tokenizers import AddedToken
    from transformers import GPT2LMHeadModel

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(PARAMS_YAML)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        base.run(load_params("params.yaml"))
    tok = train_tiny_tokenizer(TEXTS, vocab_size=300)
    tok.add_tokens([AddedToken(MARKUP, normalized=False)])
    tok.save_pretrained(root / "models/adapter")  # the tiny base's tokenizer travels with the adapter
    model = GPT2LMHeadModel.from_pretrained(root / "models/base")
    if echo:
        target = tok.convert_tokens_to_ids(MARKUP)
        with torch.no_grad():
            # every hidden state becomes e0; only the target's (tied) embedding points there
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.zero_()
            model.transformer.ln_f.bias[0] = 1.0
            model.transformer.wte.weight[target].zero_()
            model.transformer.wte.weight[target, 0] = 10.0
        model.save_pretrained(root / "models/base")
    torch.manual_seed(1)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False))
    lora.save_pretrained(root / "models/adapter")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    top = tmp_path_factory.mktemp("chat")
    return {"random": build_project(top / "random", echo=False), "echo": build_project(top / "echo", echo=True)}


def project(built, kind: str, dest: Path, monkeypatch) -> Path:
    shutil.copytree(built[kind], dest, dirs_exist_ok=True)
    monkeypatch.chdir(dest)
    return dest


def session_for(root: Path, *overrides: str, only=None) -> ChatSession:
    s = ChatSession(load_params(root / "params.yaml", list(overrides)), root=root, only=only)
    s.load()
    return s


# ---------------------------------------------------------------- engine


def test_pieces_join_to_the_sampled_answer_and_each_side_keeps_its_history(built):
    s = session_for(built["random"])
    assert s.sides == ("base", "adapter")
    prompt = s.render("adapter", "Topic 3?")
    assert prompt.startswith(SYSTEM) and prompt.endswith("User: Topic 3?\nAssistant:")
    answers = {}
    sampled = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=12)
    for side in s.sides:
        pieces: list[str] = []
        torch.manual_seed(7)
        reply = s.reply(side, "Topic 3?", sampled, threading.Event(), pieces.append)
        assert "".join(pieces).strip() == reply.text and reply.text
        assert reply.finish in ("eos", "length") and 0 < reply.tokens <= 12
        answers[side] = reply.text
    # the same answer as a plain, unstreamed generate of the same prompt with the same seed
    ids = s.tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    torch.manual_seed(7)
    out = s.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=True,
                           temperature=1.0, top_p=1.0,
                           pad_token_id=s.tok.pad_token_id, eos_token_id=s.tok.eos_token_id)
    assert s.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == answers["adapter"]
    assert answers["base"] != answers["adapter"], "the base side answers with the adapter off"

    # second turn: each side continues its own conversation
    for side in s.sides:
        again = s.render(side, "And topic 4?")
        assert f"User: Topic 3?\nAssistant: {answers[side]}" in again
        other = "adapter" if side == "base" else "base"
        assert answers[other] not in again
    s.clear()
    assert s.render("base", "hi") == s.render("adapter", "hi") == f"{SYSTEM}\n\nUser: hi\nAssistant:"


def test_text_format_continues_the_plain_text(built):
    s = session_for(built["random"], "build.format=text")
    assert s.render("base", "Printers") == "Printers", "no template, no system prompt: the text itself"
    pieces: list[str] = []
    s.reply("base", "Printers", GREEDY, threading.Event(), pieces.append)
    first = s.state["base"].turns[0].reply
    assert first == "".join(pieces), "a continuation is kept exactly, leading space and all"
    assert s.render("base", "Deadlines") == f"Printers{first}\nDeadlines"


def test_a_set_event_stops_the_answer_at_the_next_token(built):
    s = session_for(built["echo"])
    stop = threading.Event()
    pieces: list[str] = []

    def on_piece(piece: str) -> None:
        pieces.append(piece)
        stop.set()

    streamed: list[tuple[str, int]] = []
    s.reply("base", "hi", Sampling(temperature=0, max_new_tokens=5), threading.Event(),
            lambda piece: streamed.append((piece, len(s.state["base"].turns))))
    # word by word, while the answer is being written (it joins the history only at the end)
    assert len(streamed) >= 5 and "".join(p for p, _ in streamed) == MARKUP * 5
    assert all(n == 0 for _, n in streamed)

    reply = s.reply("adapter", "hi", Sampling(temperature=0, max_new_tokens=2000), stop, on_piece)
    assert reply.finish == "stopped" and reply.tokens < 100
    assert reply.note() == f"stopped after {reply.tokens} tokens"
    # what was written stays in the conversation, as the person saw it
    assert s.state["adapter"].turns[-1].reply == reply.text and reply.text.startswith(MARKUP.strip())
    # a stop that comes after the answer ended stops nothing
    done = s.reply("base", "hi", Sampling(temperature=0, max_new_tokens=3), threading.Event())
    assert done.finish == "length" and done.text == (MARKUP * 3).strip()


def test_a_long_conversation_drops_its_oldest_turns_to_fit(built):
    s = session_for(built["echo"])
    s.model.config.n_positions = 64
    for i in range(6):
        reply = s.reply("base", f"question {i}", Sampling(temperature=0, max_new_tokens=8), threading.Event())
        assert reply.finish == "length"
    prompt = s.tok(s.render("base", "next"))["input_ids"]
    assert len(prompt) > 64, "the whole history no longer fits"
    ids, room = s._fit("base", "next", 8)
    assert len(ids) + room <= 64 and room == 8
    with pytest.raises(UserError, match="reads at most 64"):
        s._fit("base", "long " * 100, 8)


# ---------------------------------------------------------------- the screen


async def test_screen_streams_both_sides_stops_on_esc_and_shows_markup_as_text(built, tmp_path, monkeypatch):
    root = project(built, "echo", tmp_path / "p", monkeypatch)
    app = ChatApp(root, load_params("params.yaml"), sampling=Sampling(temperature=0, max_new_tokens=4000))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.chat
        status = lambda: plain(screen.query_one("#chat-status"))  # noqa: E731
        assert app.focused is not screen.query_one("#chat-input"), "no text field focused on open"
        await wait_for(pilot, lambda: screen.state != "loading", what="the models to load")
        assert screen.state == "ready" and status().startswith("ready"), status()
        # stacked at 80 columns: base above adapter, each the full width
        base_pane, adapter_pane = screen.query_one("#chat-base-pane"), screen.query_one("#chat-adapter-pane")
        assert base_pane.region.x == adapter_pane.region.x and base_pane.region.y < adapter_pane.region.y

        await pilot.press("i")
        assert app.focused is screen.query_one("#chat-input")
        await pilot.press(*"hi", "enter")
        base_log = lambda: plain(screen.query_one("#chat-base"))  # noqa: E731
        adapter_log = lambda: plain(screen.query_one("#chat-adapter"))  # noqa: E731
        await wait_for(pilot, lambda: "[bold]x[/bold]" in base_log(), what="base tokens")
        assert screen.generating and "writing" in base_log()
        await pilot.press("escape")  # stops the base's answer; the adapter answers next
        await wait_for(pilot, lambda: "stopped after" in base_log(), what="the base to stop")
        await wait_for(pilot, lambda: "[bold]x[/bold]" in adapter_log(), what="adapter tokens")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.generating, what="the adapter to stop")
        for side, log in (("base", base_log()), ("adapter", adapter_log())):
            turns = screen.session.state[side].turns
            assert len(turns) == 1 and "stopped after" in log, log
            assert turns[0].reply.count("[bold]x[/bold]") < 4000
        assert app.focused is screen.query_one("#chat-input"), "Esc during an answer stops it; the field keeps focus"
        await pilot.press("escape")
        assert app.focused is None, "Esc with nothing running leaves the field"

        # the reply is markup, shown as the characters the model wrote
        assert base_log().startswith("you: hi\n[bold]x[/bold] [bold]x[/bold]")
        assert "[bold]x[/bold] [bold]x[/bold]" in on_screen(app)
        text = screen.query_one("#chat-base").render()
        assert not any("bold" in str(span.style) and text.plain[span.start:span.end] == "x" for span in text.spans)

        # sampling at hand: keys change what the status line says and the next answer uses
        await pilot.press("t", "t", "p")
        assert screen.sampling.temperature == 0.2 and screen.sampling.top_p == 1.0
        assert "temperature 0.2" in status()
        await pilot.press("T", "T", "T")
        assert screen.sampling.temperature == 0.0 and "greedy" in status()

        await pilot.press("c")
        assert "hi" not in base_log() and screen.session.state["base"].turns == []


async def test_screen_without_an_adapter_chats_with_the_base_and_says_so(built, tmp_path, monkeypatch):
    root = project(built, "echo", tmp_path / "p", monkeypatch)
    (root / "models/adapter/adapter_config.json").unlink()  # the tokenizer stays: the tiny base needs it
    app = ChatApp(root, load_params("params.yaml"), sampling=Sampling(temperature=0, max_new_tokens=3))
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.chat
        await wait_for(pilot, lambda: screen.state != "loading", what="the models to load")
        assert "no adapter in models/adapter" in plain(screen.query_one("#chat-status"))
        assert not screen.query_one("#chat-adapter-pane").display
        assert not screen.query_one("#chat-panes").has_class("-stacked"), "side by side from 100 columns"
        await pilot.press("enter", *"hey", "enter")
        await wait_for(pilot, lambda: not screen.generating and screen.session.state["base"].turns, what="an answer")
        assert "[bold]x[/bold]" in on_screen(app)


@pytest.mark.parametrize("where", ["tenny chat", "tenny (key 7)"])
async def test_screen_shows_a_missing_base_and_names_the_command(tmp_path, where):
    from tui.app import TennyApp
    from tui.screens.chat import ChatScreen

    params = load_params(tmp_path / "params.yaml")
    app = ChatApp(tmp_path, params) if where == "tenny chat" else TennyApp(tmp_path, params, start="chat")
    async with app.run_test(size=(80, 24)) as pilot:
        if where != "tenny chat":
            await pilot.press("7")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.state == "error", what="the error")
        assert "dvc repro train" in plain(screen.query_one("#chat-status"))
        await pilot.press("i", *"hi", "enter")  # nothing to ask: said, not crashed
        assert not screen.generating


# ---------------------------------------------------------------- tenny chat


def test_tenny_chat_prompt_prints_both_answers(built, tmp_path, monkeypatch, capsys):
    project(built, "echo", tmp_path / "p", monkeypatch)
    assert main(["chat", "--prompt", "hi", "--temperature", "0", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    base_part, adapter_part = out.split("── base + adapter ──")
    assert base_part.startswith("── base model ──")
    for part in (base_part, adapter_part):
        assert "[bold]x[/bold] [bold]x[/bold] [bold]x[/bold]" in part and "cut at max_new_tokens (3)" in part

    assert main(["chat", "--prompt", "hi", "--only", "base", "--temperature", "0", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "base model" in out and "adapter" not in out


def test_tenny_chat_names_what_is_missing(built, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["chat", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "models/base" in err and "dvc repro train" in err

    project(built, "echo", tmp_path / "p", monkeypatch)
    shutil.rmtree("models/adapter")
    assert main(["chat", "--prompt", "hi", "--only", "adapter"]) == 2
    assert "no adapter" in capsys.readouterr().err
    # the tiny base has no tokenizer without the adapter folder: said, with the command that makes one
    assert main(["chat", "--prompt", "hi"]) == 2
    captured = capsys.readouterr()
    assert "no adapter" in captured.err and "dvc repro train" in captured.err
    assert main(["chat", "--prompt", "hi", "--top-p", "0"]) == 2
    assert "--top-p 0" in capsys.readouterr().err
