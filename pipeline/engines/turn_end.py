"""The token a turn ends with: one answer for build, train, eval, chat, the judge and export.

A model stops where training taught it to stop. For a plain-text sample that
is the tokenizer's EOS, which tenny appends. For a chat, it is the token the
chat template writes right after an assistant's answer, which is often not
EOS: ChatML's ``<|im_end|>``, Llama 3's ``<|eot_id|>``, Gemma's
``<end_of_turn>``, Phi-3's ``<|end|>``. tenny finds it by rendering the
template, not by a table of names: a conversation of user, assistant, user
with placeholder texts is rendered, and the turn end is the first special
(added) token after the answer, with nothing but whitespace before it. The
next user turn is there because some templates close an assistant turn only
when another turn follows.

A template with no such token (it ends answers with plain text, or with a
string the tokenizer does not hold as one token) has no turn end a model can
stop on: ``build.stop_token`` then names one, and tenny writes it after every
answer it trains on. Generation stops on the turn end and on EOS.

Heavy imports stay out: callers hand in a loaded tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pipeline.core.errors import UserError

# Placeholders for the rendered turns: private-use characters no template writes or trims.
_USER, _REPLY, _NEXT = "\ue000user\ue000", "\ue000reply\ue000", "\ue000next\ue000"
PROBE = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY},
         {"role": "user", "content": _NEXT}]

HOW_TO_SET = ("set build.stop_token to a token of this tokenizer that should end an answer (tenny then writes it "
              "after every answer it trains on and stops generation there), set a chat template that ends "
              "assistant turns with a special token, or set build.format: text")


@dataclass(frozen=True)
class TurnEnd:
    """What ends one kind of sample: the token training appends and labels, and generation stops on."""

    token: str
    id: int
    eos: str
    eos_id: int
    source: str  # "chat template" | "build.stop_token" | "eos"
    rendered: bool = True  # False: the chat template does not write it; tenny adds it after each answer

    @property
    def stop_tokens(self) -> list[str]:
        """The turn end, then EOS: a model may still end with EOS and should stop there too."""
        return list(dict.fromkeys([self.token, self.eos]))

    @property
    def stop_ids(self) -> list[int]:
        return list(dict.fromkeys([self.id, self.eos_id]))


def _special_tokens(tok) -> list[str]:
    """Every token the tokenizer treats as one piece whatever surrounds it: specials and added tokens."""
    found = set(tok.all_special_tokens)
    found.update(str(t) for t in tok.added_tokens_decoder.values())
    return sorted((t for t in found if t), key=len, reverse=True)  # longest first: "<|end|>" before "<|e"


def single_token_id(tok, token: str) -> int | None:
    """The id of ``token`` when the tokenizer reads it as exactly one token, else None."""
    ids = tok(token, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _eos(tok) -> tuple[str, int]:
    if tok.eos_token is None or tok.eos_token_id is None:
        raise UserError(f"{_name(tok)}: the tokenizer has no EOS token; set one (tokenizer_config.json eos_token)")
    return tok.eos_token, tok.eos_token_id


def _name(tok) -> str:
    return getattr(tok, "name_or_path", "") or "the tokenizer"


def rendered_after_answer(tok) -> str:
    """What the chat template writes between an assistant's answer and the next user turn."""
    import jinja2

    try:
        text = tok.apply_chat_template(PROBE, tokenize=False)
    except jinja2.TemplateError as err:
        raise UserError(f"build.format: chat: the chat template of {_name(tok)} cannot render a user, assistant, "
                        f"user conversation ({err}); {HOW_TO_SET}") from None
    if text.count(_REPLY) != 1:
        raise UserError(f"build.format: chat: the chat template of {_name(tok)} does not write an assistant's "
                        f"answer once as given; {HOW_TO_SET}")
    after = text.split(_REPLY, 1)[1]
    return after.split(_NEXT, 1)[0]


def find_turn_end(tok) -> str | None:
    """The special token the chat template ends an assistant turn with, or None when there is none.

    The first token after the answer, past whitespace only, that is one of
    the tokenizer's special or added tokens.
    """
    after = rendered_after_answer(tok)
    rest = after.lstrip()
    for special in _special_tokens(tok):
        if rest.startswith(special):
            return special
    return None


def chat_turn_end(tok, stop_token: str | None = None) -> TurnEnd:
    """The turn end of chat samples: ``build.stop_token`` if set, else the chat template's."""
    eos, eos_id = _eos(tok)
    if stop_token:
        token_id = single_token_id(tok, stop_token)
        if token_id is None:
            choices = ", ".join(repr(t) for t in _special_tokens(tok)[:12])
            raise UserError(f"build.stop_token: {stop_token!r} is not one token of {_name(tok)}; "
                            f"choose one of its special tokens ({choices})")
        rendered = rendered_after_answer(tok).lstrip().startswith(stop_token)
        return TurnEnd(stop_token, token_id, eos, eos_id, "build.stop_token", rendered=rendered)
    found = find_turn_end(tok)
    if found is None or single_token_id(tok, found) is None:
        after = rendered_after_answer(tok)
        raise UserError(f"build.format: chat: the chat template of {_name(tok)} ends an assistant turn with no "
                        f"token a model can stop on (after an answer it writes {after!r}); {HOW_TO_SET}")
    return TurnEnd(found, single_token_id(tok, found), eos, eos_id, "chat template")


def text_turn_end(tok) -> TurnEnd:
    """Plain text and prompt/completion samples end with EOS, which tenny appends."""
    eos, eos_id = _eos(tok)
    return TurnEnd(eos, eos_id, eos, eos_id, "eos", rendered=False)


class TurnEnds:
    """A tokenizer's turn ends by sample kind, worked out once and only when asked for.

    ``chat`` is looked up lazily: data without chats (``build.format: text``)
    never needs a template with a turn end.
    """

    def __init__(self, tok, stop_token: str | None = None) -> None:
        self.tok = tok
        self.stop_token = stop_token or None

    @cached_property
    def chat(self) -> TurnEnd:
        return chat_turn_end(self.tok, self.stop_token)

    @cached_property
    def text(self) -> TurnEnd:
        return text_turn_end(self.tok)

    def for_record(self, record: dict) -> TurnEnd:
        return self.chat if "messages" in record else self.text

    def for_format(self, fmt: str) -> TurnEnd:
        """What a prompt rendered per ``build.format`` is answered up to: chat turns, or plain text."""
        return self.chat if fmt == "chat" else self.text


def stop_token_ids(tok, stop_token: str | None = None, fmt: str = "chat") -> list[int]:
    """Token ids generation stops on for prompts rendered per ``fmt`` (eval, chat, samples while training).

    Lenient where a chat template has no turn end: EOS then (build has
    already refused such a template for chat data; this serves what remains).
    """
    ends = TurnEnds(tok, stop_token)
    try:
        return ends.for_format(fmt).stop_ids
    except UserError:
        return ends.text.stop_ids
