"""What to erase: one concept, its kind, and the optional pieces a method may need.

The blocklist (pipeline) and the `erasure erase` command both build these; the methods read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .strict_yaml import invisible, preview

# attribute: a word that qualifies what a prompt shows (a colour: "a red car"), erased wherever it does.
KINDS = ("style", "object", "instance", "attribute", "nudity", "memorized", "implicit")
Kind = Literal["style", "object", "instance", "attribute", "nudity", "memorized", "implicit"]
# Kinds erased by mapping onto another thing of the same kind (their anchor: a class, another colour),
# which the methods that map need and ESD's scene prompts are made from.
ANCHORED_KINDS = ("instance", "object", "attribute")


class ConceptError(ValueError):
    """A concept that cannot be erased as asked (names the field and what was expected)."""


# Trimmed from a name's edges, not refused: what YAML block scalars (`concept: >`) and CSV cells leave there.
_EDGES = " \t\r\n"


def hidden_character(text: str) -> str | None:
    """The first character a reader cannot see inside `text` (zero-width, bidi control, ESC, a newline or
    tab inside the name, ...), described with its position; None when every character shows."""
    return invisible(text.strip(_EDGES))


class Concept(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    kind: Kind
    anchor: str | None = None  # CA: the concept the target is mapped onto
    alternative: str | None = None  # All-but-One: what prompts naming the target should show instead
    erase_from: str | None = None  # ESD "erase from": a broader concept the trained model sees
    reference_images: tuple[Path, ...] = ()  # memorized images
    anchor_prompts: tuple[str, ...] = ()  # CA: prompts of the anchor concept (default: generated)
    paraphrases: tuple[str, ...] = ()

    @field_validator("text", "anchor", "alternative", "erase_from")
    @classmethod
    def _clean(cls, v: str | None) -> str | None:
        if v is None:
            return None
        hidden = hidden_character(v)  # on the raw text: collapsing whitespace would hide a newline or tab
        if hidden:
            raise ValueError(f"expected visible text, got {hidden}")
        v = " ".join(v.split())
        if not v:
            raise ValueError("must be non-empty text")
        return v

    @field_validator("anchor_prompts", "paraphrases")
    @classmethod
    def _visible(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(v, 1):
            hidden = hidden_character(text)
            if hidden:
                raise ValueError(f"item {i}: expected visible text, got {hidden}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Concept:
        low = self.text.lower()
        for field in ("anchor", "alternative", "erase_from"):
            value = getattr(self, field)
            if value is not None and value.lower() == low:
                raise ValueError(f"{field} {value!r} equals the concept itself; expected a different concept")
        return self

    @property
    def slug(self) -> str:
        return "".join(ch if ch.isalnum() else "-" for ch in self.text.lower()).strip("-")[:60] or "concept"


def check_encodable(tokenizer, text: str, field: str = "concept") -> list[int]:
    """Token ids of `text` (without special tokens); raise if the tokenizer cannot encode it whole."""
    # verbose=False: an over-long text is reported below as one error; transformers' own warning
    # goes through whatever logging handlers the host installed (Prefect's can print a traceback).
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    if not ids:
        raise ConceptError(f"{field} {preview(text)}: the tokenizer encodes it as no tokens at all")
    unk = tokenizer.unk_token_id
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    if unk is not None and unk in ids or special & set(ids):
        raise ConceptError(f"{field} {preview(text)}: the tokenizer maps part of it to an unknown/special token; "
                           "expected text its vocabulary can spell")
    room = tokenizer.model_max_length - 2
    if len(ids) > room:
        raise ConceptError(f"{field} {preview(text)}: {len(ids)} tokens, but prompts hold at most {room}")
    return ids


# Words every caption shares: training their embedding rows (CA's `embedding` rule) would change
# every prompt that uses them ("the midnight lantern poster" trained "the", and "the garden gate
# print", another memorized image, stopped reproducing on some seeds).
FUNCTION_WORDS = frozenset("a an the of in on at to by for from with and or".split())


def content_token_ids(tokenizer, text: str, field: str = "concept") -> list[int]:
    """The ids of `text`'s tokens that are not function words (all of them if it has nothing else)."""
    ids = check_encodable(tokenizer, text, field)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    keep = [i for i, t in zip(ids, tokens) if _word(t) not in FUNCTION_WORDS]
    return keep or ids


def _word(token: str) -> str:
    # CLIP-style BPE marks a word's end with </w>; SentencePiece-style marks its start with a special space.
    return token.replace("</w>", "").lstrip("\u2581\u0120").lower()
