"""YAML as this project reads it (blocklists, params): safe, strict and bounded.

    data = load(text)          # StrictYamlError (a ValueError) naming the line of the problem

Stricter than `yaml.safe_load` in three ways, each a silent failure a user once hit:
- a key given twice in one mapping is an error (safe_load keeps the last value: a second
  `concepts:` dropped every concept of the first without a word);
- anchors and aliases (`&a`, `*a`, `<<: *a`) are refused: nothing here needs them, and a few
  lines of nested aliases expand to gigabytes (a "billion laughs" file);
- the text is capped at MAX_BYTES before parsing.

`preview(value)` names a bad value in a message without building its whole representation, and
`invisible(text)` finds characters a reader cannot see (zero-width, bidi controls, ESC, ...).
"""

from __future__ import annotations

import unicodedata

import yaml

MAX_BYTES = 4 << 20  # a blocklist of thousands of concepts is well under 1 MB
MAX_DEPTH = 100  # nesting levels; PyYAML's composer recurses per level (a few thousand '[' overflow its stack)


class StrictYamlError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise StrictYamlError(f"line {event.start_mark.line + 1}: alias '*{event.anchor}': anchors and aliases "
                                  "are not accepted; write the value out in full")
        if getattr(event, "anchor", None) is not None:
            raise StrictYamlError(f"line {event.start_mark.line + 1}: anchor '&{event.anchor}': anchors and aliases "
                                  "are not accepted; write the value out in full")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise StrictYamlError(f"line {event.start_mark.line + 1}: values nested more than {MAX_DEPTH} "
                                      "levels deep; expected a flatter document")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (StrictYamlError, yaml.YAMLError):
            raise
        except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as exc:
            # A scalar its type's constructor cannot read (the date 2024-13-45, `!!int abc`, `!!bool x`, an
            # integer of 5,000 digits): PyYAML lets the Python error through, with no line.
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            value = preview(node.value) if isinstance(node, yaml.ScalarNode) else "the value"
            reason = ("not a value of that type" if isinstance(exc, (LookupError, AttributeError))
                      else str(exc).split(";")[0])
            raise StrictYamlError(f"line {node.start_mark.line + 1}: {value} cannot be read as {tag} ({reason}); "
                                  "quote it to keep it as text") from None

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise StrictYamlError(f"line {key_node.start_mark.line + 1}: merge key '<<' is not accepted; "
                                      "write the keys out in full")
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader names it
                return super().construct_mapping(node, deep)
            if first is not None:
                raise StrictYamlError(f"line {key_node.start_mark.line + 1}: key {preview(key)} given twice in one "
                                      f"mapping (first at line {first}); each key may appear once")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)




def load(text: str):
    """Parse one YAML document strictly (see the module docstring)."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_BYTES:
        raise StrictYamlError(f"{size:,} bytes; expected at most {MAX_BYTES:,} (is this the right file?)")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except StrictYamlError:
        raise
    except yaml.reader.ReaderError as exc:  # its own text spans two lines and gives no line number
        ch = exc.character if isinstance(exc.character, str) else chr(exc.character)
        line = text.count("\n", 0, exc.position) + 1
        raise StrictYamlError(f"not valid YAML: line {line}: {_describe(ch)}: control characters are not allowed "
                              "in a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise StrictYamlError(f"not valid YAML: {where}{getattr(exc, 'problem', None) or exc}") from None


def preview(value, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters, built only as far as needed (a huge value stays cheap)."""
    parts: list[str] = []
    budget = [limit + 1]

    def emit(s: str) -> bool:
        if budget[0] <= 0:
            return False
        parts.append(s[:budget[0]])
        budget[0] -= len(s)
        return budget[0] > 0

    def walk(v) -> bool:
        if isinstance(v, dict):
            if not emit("{"):
                return False
            for i, (k, x) in enumerate(v.items()):
                if (i and not emit(", ")) or not walk(k) or not emit(": ") or not walk(x):
                    return False
            return emit("}")
        if isinstance(v, (list, tuple)) or isinstance(v, (set, frozenset)) and v:  # an empty set reads set()
            open_, close = {list: ("[", "]"), tuple: ("(", ")")}.get(type(v), ("{", "}"))
            if not emit(open_):
                return False
            for i, x in enumerate(v):
                if (i and not emit(", ")) or not walk(x):
                    return False
            return emit(close)
        if isinstance(v, (str, bytes)) and len(v) > limit:
            return emit(repr(v[:limit + 1]))
        if isinstance(v, int) and v.bit_length() > 10_000:  # repr: slow, then refused past 4,300 digits
            return emit(f"<an integer of {v.bit_length():,} bits>")
        return emit(repr(v))

    walk(value)
    shown = "".join(parts)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def invisible(text: str) -> str | None:
    """A description of the first character in `text` a reader cannot see, or None.

    Control characters (ESC, NUL, newlines inside a name), format characters (zero-width
    space and joiners, bidi overrides, the byte-order mark) and line/paragraph separators are
    what make two names look equal on screen and differ to the tokenizer; so do a few blank
    letters and marks of other categories (_BLANK: the Hangul fillers, the braille blank, ...).
    """
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn") and ch not in " " or ch in _BLANK:
            return f"{_describe(ch)} at position {i + 1}"
    return None


# Drawn as nothing, yet letters or marks by category (so not caught above): seen in faked names.
_BLANK = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "") or {"\x1b": "ESCAPE", "\n": "LINE FEED", "\t": "TAB",
                                        "\r": "CARRIAGE RETURN", "\x00": "NULL"}.get(ch, "control character")
    return f"U+{ord(ch):04X} {name}"
