"""Blocklist loading, normalization, hashing and diff; every malformed file gives its own error."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from erasure.blocklist import Blocklist, BlocklistError, Entry, diff, load_blocklist
from erasure.concept import Concept
from erasure.config import load_params
from erasure.pipeline import ingest
from erasure.strict_yaml import preview

ROOT = Path(__file__).resolve().parent.parent
MALFORMED = Path(__file__).resolve().parent / "blocklists" / "malformed"
HELPERS = {"lantern.png", "not-an-image.png"}  # images the malformed files point at

KINDS = "style, object, instance, attribute, nudity, memorized, implicit"
# file -> what its error must say (the field and what was expected); a tuple: every line it must hold.
EXPECTED = {
    "empty.yaml": "the file is empty; expected a mapping with a 'concepts' list",
    "empty.csv": "the file is empty; expected a header row",
    "not-utf8.yaml": "expected UTF-8 text, got an undecodable byte at offset 24",
    "bad-yaml.yaml": "not valid YAML: line 4, column 1",
    "not-a-mapping.yaml": "top level: expected a mapping with a 'concepts' list, got list",
    "concepts-not-a-list.yaml": "concepts: expected a list of entries, got str 'Vasquez'",
    "concepts-empty.yaml": "concepts: expected at least one entry, got an empty list",
    "unknown-top-level.yaml": ("unknown top-level key 'concept' (did you mean 'concepts'?)",
                               "concepts: expected a list of entries, got nothing"),
    "wrong-version.yaml": "version: expected 1, got int 2",
    "entry-not-a-mapping.yaml": "entry 1 (?): expected a mapping of fields (concept, kind, ...), got str 'Vasquez'",
    "missing-concept.yaml": "entry 1 (?): concept: expected the text naming the concept, got nothing",
    "concept-empty-value.yaml": "entry 1 (?): concept: expected the text naming the concept, got nothing",
    "whitespace-concept.yaml": "entry 1 (?): concept: expected non-empty text, got only whitespace",
    "concept-not-text.yaml": "concept: expected text, got int 123",
    "missing-kind.yaml": f"entry 1 (Vasquez): kind: expected one of {KINDS}, got nothing",
    "unknown-kind.yaml": f"entry 1 (Vasquez): kind: expected one of {KINDS}, got 'painter'",
    "unknown-field.yaml": "entry 1 (Pip): anchr: unknown field 'anchr' (did you mean 'anchor'?)",
    "unknown-method.yaml": "method: expected one of esd, ca, abo, loss-max, uce, got 'magic'",
    "paraphrases-not-a-list.yaml": "paraphrases: expected a list of texts, got str 'in the manner of Vasquez'",
    "eval-prompt-not-text.yaml": "eval_prompts: expected a list of non-empty texts, got int 5 as item 2",
    "anchor-equals-target.yaml": "entry 1 (Pip): anchor: expected a concept other than the target itself, got 'pip'",
    "alternative-equals-target.yaml": "alternative: expected a concept other than the target itself, got 'VASQUEZ'",
    "anchor-is-a-paraphrase.yaml": "anchor: expected a concept other than the target's paraphrases",
    "duplicate-conflicting.yaml": "entry 2 (vasquez): concept: expected each concept once, got it again with "
                                  "different kind (first at entry 1)",
    "memorized-without-reference.yaml": "reference_images: expected the image file(s) a memorized concept must "
                                        "stop reproducing, got none",
    "missing-reference-image.yaml": "reference_images: expected an existing image file, got 'no-such-image.png'",
    "reference-not-an-image.yaml": "reference_images: expected a readable image, got 'not-an-image.png'",
    "reference-on-a-style.yaml": "reference_images: expected none for kind 'style'",
    "unencodable-too-long.yaml": "concept: expected text the model's tokenizer can encode whole, got concept "
                                 "'a very long",
    "unencodable-special-token.yaml": "concept: expected text the model's tokenizer can encode whole, got "
                                      "concept 'Vasquez <|endoftext|>': the tokenizer maps part of it to an "
                                      "unknown/special token",
    "paraphrase-unencodable.yaml": "paraphrases: expected text the model's tokenizer can encode whole, got "
                                   "paraphrases 'dark horizontal",
    "several-problems.yaml": (f"entry 1 (Vasquez): kind: expected one of {KINDS}, got 'painter'",
                              "entry 2 (Pip): anchor: expected a concept other than the target itself",
                              "entry 2 (Pip): method: expected one of",
                              "entry 3 (Okafor): paraphrases: expected a list of texts, got str 'navy dots'"),
    "missing-column.csv": "header: expected the columns concept,kind",
    "unknown-kind.csv": f"entry 1 (Vasquez): kind: expected one of {KINDS}, got 'painter'",
    "csv-unknown-column.csv": "header: unknown column 'anchr' (did you mean 'anchor'?)",
    "csv-extra-cells.csv": "entry 1 (Vasquez): row: expected at most 2 cells (one per column), got 3",
    "unsupported.json": "unsupported file type '.json'; expected .yaml, .yml, .csv",
    # Strict YAML: a key twice, anchors and aliases, tags, nesting (the line is named).
    "concepts-twice.yaml": "line 6: key 'concepts' given twice in one mapping (first at line 3)",
    "entry-key-twice.yaml": "line 5: key 'kind' given twice in one mapping (first at line 3)",
    "flow-key-twice.yaml": "line 2: key 'concept' given twice in one mapping (first at line 2)",
    "version-twice.yaml": "line 2: key 'version' given twice in one mapping (first at line 1)",
    "anchor-alias.yaml": "line 3: anchor '&k': anchors and aliases are not accepted",
    "billion-laughs.yaml": "line 5: anchor '&a': anchors and aliases are not accepted",
    "merge-key.yaml": "line 3: merge key '<<' is not accepted",
    "python-tag.yaml": "not valid YAML: line 2, column 14: could not determine a constructor for the tag "
                       "'tag:yaml.org,2002:python/object/apply:os.system'",
    "include-tag.yaml": "not valid YAML: line 1, column 11: could not determine a constructor for the tag '!include'",
    "two-documents.yaml": "not valid YAML: line 4, column 1: but found another document",
    "deep-nesting.yaml": "line 2: values nested more than 100 levels deep",
    "raw-escape-byte.yaml": "not valid YAML: line 2: U+001B ESCAPE: control characters are not allowed",
    "raw-nul-byte.yaml": "not valid YAML: line 3: U+0000 NULL: control characters are not allowed",
    # Characters a reader cannot see: which one, and where (the entry's name shows it escaped).
    "zero-width-space.yaml": "entry 1 (Pi\\u200bp): concept: expected visible text, got U+200B ZERO WIDTH SPACE "
                             "at position 3",
    "zero-width-joiner.yaml": "entry 1 (Vas\\u200dquez): concept: expected visible text, got U+200D ZERO WIDTH "
                              "JOINER at position 4",
    "bidi-override.yaml": "concept: expected visible text, got U+202E RIGHT-TO-LEFT OVERRIDE at position 1",
    "bom-inside-concept.yaml": "concept: expected visible text, got U+FEFF ZERO WIDTH NO-BREAK SPACE at position 3",
    "soft-hyphen-in-concept.yaml": "concept: expected visible text, got U+00AD SOFT HYPHEN at position 4",
    "hangul-filler-in-concept.yaml": "entry 1 (Pip\\u3164): concept: expected visible text, got U+3164 HANGUL "
                                     "FILLER at position 4",
    "escape-in-concept.yaml": "entry 1 (Pip\\x1b[31m): concept: expected visible text, got U+001B ESCAPE at "
                              "position 4",
    "nul-in-concept.yaml": "concept: expected visible text, got U+0000 NULL at position 3",
    "newline-in-concept.yaml": "entry 1 (Pi\\np): concept: expected visible text, got U+000A LINE FEED at "
                               "position 3",
    "line-separator-in-concept.yaml": "concept: expected visible text, got U+2028 LINE SEPARATOR at position 4",
    "tab-in-concept.yaml": "concept: expected visible text, got U+0009 TAB at position 4",
    "kind-invisible.yaml": "entry 1 (Vasquez): kind: expected visible text, got U+200B ZERO WIDTH SPACE at "
                           "position 6",
    "method-invisible.yaml": "entry 1 (Pip): method: expected visible text, got U+200B ZERO WIDTH SPACE at position 2",
    "control-in-anchor.yaml": "entry 1 (Pip): anchor: expected visible text, got U+001B ESCAPE at position 1",
    "control-in-paraphrase.yaml": "paraphrases: expected visible text, got U+0007 control character at position 5 "
                                  "in item 2",
    "control-in-eval-prompt.yaml": "eval_prompts: expected visible text, got U+000D CARRIAGE RETURN at position 11 "
                                   "in item 1",
    "reference-image-invisible.yaml": "reference_images: expected visible text, got U+200B ZERO WIDTH SPACE at "
                                      "position 4 in item 1",
    "invisible-field-name.yaml": ("entry 1 (Vasquez): kind\\u200b: unknown field 'kind\\u200b' (did you mean "
                                  "'kind'?)",
                                  f"entry 1 (Vasquez): kind: expected one of {KINDS}, got nothing"),
    "csv-control-in-cell.csv": "entry 1 (Vasquez): paraphrases: expected visible text, got U+001B ESCAPE at "
                               "position 5 in item 2",
    "csv-newline-in-cell.csv": "entry 1 (Pi\\np): concept: expected visible text, got U+000A LINE FEED at position 3",
    "csv-zero-width-in-cell.csv": "entry 2 (Pi\\u200bp): concept: expected visible text, got U+200B ZERO WIDTH "
                                  "SPACE at position 3",
    # Values YAML reads as another type than text.
    "concept-a-date.yaml": "concept: expected text, got date datetime.date(2024, 1, 1) (unquoted, YAML reads it as "
                           "a date; quote it to keep it as text)",
    "concept-no-is-false.yaml": "concept: expected text, got bool False (unquoted, YAML reads it as true/false",
    "concept-a-mapping.yaml": "concept: expected text, got dict {'name': 'Pip', 'also': 'Bobo'}",
    "concept-huge-hex-int.yaml": "concept: expected text, got int <an integer of 20,000 bits> (unquoted, YAML reads it "
                                 "as a number",
    # Values a type's constructor cannot read (PyYAML lets a Python error through).
    "concept-invalid-date.yaml": "line 2: '2024-13-45' cannot be read as !!timestamp (month must be in 1..12); quote "
                                 "it to keep it as text",
    "int-tag-not-a-number.yaml": "line 1: 'one' cannot be read as !!int (invalid literal for int() with base 10",
    "csv-unbalanced-quote.csv": "header: expected the columns concept,kind (and optional anchor,alternative,method,"
                                "reference_images,eval_prompts,paraphrases,neighbours,anchor_prompts), got "
                                "concept,kind\\nPip,instance (missing concept, kind)",
    # The optional lists of neighbours (kept by the evaluation) and anchor prompts (CA's own), checked like
    # paraphrases.
    "neighbours-not-a-list.yaml": "entry 1 (Vasquez): neighbours: expected a list of texts, got str 'Okafor'",
    "control-in-neighbour.yaml": "entry 1 (Vasquez): neighbours: expected visible text, got U+001B ESCAPE at "
                                 "position 5 in item 2",
    "neighbour-equals-target.yaml": "entry 1 (Vasquez): neighbours: expected concepts other than the target and its "
                                    "paraphrases, got 'vasquez' as item 2",
    "neighbour-is-a-paraphrase.yaml": "entry 1 (Vasquez): neighbours: expected concepts other than the target and "
                                      "its paraphrases, got 'Dark stripes on cream' as item 2",
    "neighbour-unencodable.yaml": "entry 1 (Vasquez): neighbours: expected text the model's tokenizer can encode "
                                  "whole, got neighbours 'Okafor <|endoftext|>': the tokenizer maps part of it to an "
                                  "unknown/special token",
    "anchor-prompts-not-a-list.yaml": "entry 1 (Pip): anchor_prompts: expected a list of texts, got str "
                                      "'a yellow circle'",
    "anchor-prompts-not-text.yaml": "entry 1 (Pip): anchor_prompts: expected a list of non-empty texts, got int 7 as "
                                    "item 2",
    "anchor-prompt-unencodable.yaml": "entry 1 (Pip): anchor_prompts: expected text the model's tokenizer can encode "
                                      "whole, got anchor_prompts 'a yellow circle on a cream",
    "control-in-anchor-prompt.yaml": "entry 1 (Pip): anchor_prompts: expected visible text, got U+200B ZERO WIDTH "
                                     "SPACE at position 9 in item 1",
    "csv-control-in-anchor-prompts.csv": "entry 1 (Pip): anchor_prompts: expected visible text, got U+001B ESCAPE at "
                                         "position 3 in item 2",
}


_ENTRY = "concepts:\n  - concept: Vasquez\n    kind: style\n"
_OVER_YAML = _ENTRY + "#" * (4 << 20) + "\n"
_OVER_CSV = "concept,kind\n" + "Vasquez,style\n" * 300_000
# Cases too big to commit: each test writes its file into its own folder; checked like the files above.
GENERATED = {
    "over-size.yaml": (_OVER_YAML, f"{len(_OVER_YAML):,} bytes; expected a blocklist of at most 4,194,304 bytes"),
    "over-size.csv": (_OVER_CSV, f"{len(_OVER_CSV):,} bytes; expected a blocklist of at most 4,194,304 bytes"),
    "huge-concept.yaml": ("concepts:\n  - concept: " + "Vasquez " * 12_500 + "\n    kind: style\n",
                          "entry 1 (Vasquez Vasquez Vasquez Vasquez Vasqu...): concept: expected text the model's "
                          "tokenizer can encode whole, got concept 'Vasquez Vasquez"),
    "huge-concept-invisible.yaml": ("concepts:\n  - concept: " + "a" * 100_000 + "\u200b\n    kind: style\n",
                                    "concept: expected visible text, got U+200B ZERO WIDTH SPACE at position 100001"),
    "huge-paraphrase-list.yaml": (_ENTRY + "    paraphrases:\n" + "      - in the manner of Vasquez\n" * 9_999
                                  + '      - "navy\\edots"\n',
                                  "paraphrases: expected visible text, got U+001B ESCAPE at position 5 in item 10000"),
    "huge-paraphrase-mapping.yaml": (_ENTRY + "    paraphrases:\n" + "".join(f"      p{i}: x\n" for i in range(10_000)),
                                     "paraphrases: expected a list of texts, got dict {'p0': 'x', 'p1': 'x', "),
    "huge-kind.yaml": ("concepts:\n  - concept: Vasquez\n    kind: " + "x" * 100_000 + "\n",
                       f"entry 1 (Vasquez): kind: expected one of {KINDS}, got 'xxxxxxxxxxxxxxxx"),
    "huge-reference-path.yaml": ("concepts:\n  - concept: the midnight lantern poster\n    kind: memorized\n"
                                 "    reference_images: [" + "a" * 100_000 + ".png]\n",
                                 "reference_images: expected an existing image file, got 'aaaaaaaaaaaaaaa"),
    "csv-huge-cell.csv": ("concept,kind\n" + "Vasquez" * 20_000 + ",style\n",
                          "line 2: not valid CSV: field larger than field limit (131072)"),
    # Thousands of problems: the first 50 are listed, then how many more.
    "many-problems.yaml": ("concepts:\n" + "".join(f"  - {{concept: c{i}, kind: painter}}\n" for i in range(3000)),
                           tuple(f"entry {i} (c{i - 1}): kind: expected one of {KINDS}, got 'painter'"
                                 for i in range(1, 51)) + ("... and 2,950 more problems (the first 50 are listed "
                                                           "above)",)),
    # An explicit key (`? `): PyYAML refuses a plain key longer than 1024 characters.
    "huge-field-name.yaml": (_ENTRY + "    ? " + "k" * 100_000 + "\n    : x\n",
                             "entry 1 (Vasquez): kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...: unknown field 'kkkkk"),
}
CASES = {**EXPECTED, **{name: expected for name, (_, expected) in GENERATED.items()}}


def _expected(name: str) -> tuple[str, ...]:
    return CASES[name] if isinstance(CASES[name], tuple) else (CASES[name],)


def _params(tmp_path: Path, blocklist: Path) -> Path:
    p = {"paths": {"blocklist": str(blocklist), "work": str(tmp_path / "work"),
                   "releases": str(tmp_path / "releases"), "cache": str(tmp_path / "cache")}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return ingest.tokenizer_for("miniworld")


def test_every_malformed_file_is_in_the_table():
    files = {p.name for p in MALFORMED.iterdir()}
    assert files - HELPERS == set(EXPECTED) and len(EXPECTED) >= 78
    assert not files & set(GENERATED)


@pytest.mark.parametrize("name", sorted(EXPECTED) + sorted(GENERATED))
def test_malformed_blocklist_gives_its_error_and_writes_nothing(name, tmp_path):
    path = MALFORMED / name
    if name in GENERATED:
        path = tmp_path / "input" / name
        path.parent.mkdir()
        path.write_text(GENERATED[name][0], encoding="utf-8")
    params = load_params(_params(tmp_path, path))
    with pytest.raises(BlocklistError) as exc:
        ingest.run(params)
    message = str(exc.value)
    for line in _expected(name):
        assert line in message
    # One problem per line, each naming the file; a huge value is previewed, never shown whole.
    lines = message.splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    shown = len(message) - len(lines) * len(f"{path}: ")  # the file's path (a tmp path of any length) aside
    assert len(lines) == len(_expected(name)) and shown < (6_000 if name == "many-problems.yaml" else 1500)
    assert all(line.isprintable() for line in lines)  # an invisible character is named, not printed
    written = {p.name for p in tmp_path.iterdir()} - {"input"}
    assert written == {"params.yaml"}


def test_an_anchor_bomb_fails_fast_with_a_short_message():
    start = time.perf_counter()
    with pytest.raises(BlocklistError) as exc:
        load_blocklist(MALFORMED / "billion-laughs.yaml")
    assert time.perf_counter() - start < 2
    assert len(str(exc.value)) < 2000 and "line 5: anchor '&a'" in str(exc.value)


def test_a_yaml_python_tag_is_never_constructed(tmp_path):
    marker = tmp_path / "constructed"
    path = tmp_path / "b.yaml"
    path.write_text(f'concepts:\n  - concept: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:'
                    f'pathlib.Path ["{marker}"]]\n    kind: style\n')
    with pytest.raises(BlocklistError, match="could not determine a constructor for the tag"):
        load_blocklist(path)
    assert not marker.exists()


# The stage command for a few representative files (each subprocess pays the imports: ~5-10 s).
@pytest.mark.parametrize("name", ["bad-yaml.yaml", "unknown-field.yaml", "unencodable-too-long.yaml",
                                  "missing-column.csv"])
def test_the_stage_command_exits_2_with_the_error_on_stderr(name, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "stages" / "ingest.py"), "--params",
                          str(_params(tmp_path, MALFORMED / name))], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "error: " in res.stderr and EXPECTED[name] in res.stderr
    assert res.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(BlocklistError, match="nope.yaml: no such blocklist file"):
        load_blocklist(tmp_path / "nope.yaml")


def test_default_yaml_and_csv_load_and_agree(tokenizer):
    a = load_blocklist(ROOT / "blocklists" / "default.yaml", tokenizer)
    b = load_blocklist(ROOT / "blocklists" / "example.csv", tokenizer)
    assert [e.concept for e in a.entries] == ["Pip", "with a golden frame", "the midnight lantern poster", "Vasquez",
                                              "Bobo", "star", "Okafor", "cross", "Tanaka", "Zuzu"]
    assert {e.kind for e in a.entries} == {"instance", "implicit", "memorized", "style", "object"}
    assert a.entries == b.entries and a.sha256 == b.sha256 and a.notes == b.notes == ()
    lantern = a.entries[2]
    assert lantern.reference_images == (str((ROOT / "blocklists" / "images" / "midnight-lantern.png").resolve()),)
    assert len(lantern.paraphrases) == 2 and a.entries[0].anchor == "circle"


def test_hash_survives_a_copy_of_the_repo_folder_but_not_a_new_image(tmp_path):
    original = load_blocklist(ROOT / "blocklists" / "default.yaml")
    shutil.copytree(ROOT / "blocklists", tmp_path / "moved")
    moved = load_blocklist(tmp_path / "moved" / "default.yaml")
    assert moved.entries[2].reference_images != original.entries[2].reference_images
    assert moved.sha256 == original.sha256
    from PIL import Image

    # Same file name, other pixels: another image, another hash.
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "moved" / "images" / "midnight-lantern.png")
    assert load_blocklist(tmp_path / "moved" / "default.yaml").sha256 != original.sha256


def test_normalization_and_merging_of_identical_entries(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(
        "concepts:\n"
        "  - {concept: '  Vasquez\u00a0 ', kind: STYLE}\n"
        "  - {concept: 'Ｖａｓｑｕｅｚ', kind: style}\n"  # full-width letters: NFKC makes them ASCII
        "  - {concept: 'vasquez', kind: ' Style '}\n"
        "  - {concept: 'Ｐｉｐ', kind: instance, anchor: '  circle', method: ' CA ',\n"
        "     paraphrases: [\"a  yellow\\u00a0circle  with eyes\"]}\n")  # a no-break space: NFKC makes it a space
    b = load_blocklist(path)
    assert [e.as_dict() for e in b.entries] == [
        {"concept": "Vasquez", "kind": "style"},
        {"concept": "Pip", "kind": "instance", "anchor": "circle", "method": "ca",
         "paraphrases": ["a yellow circle with eyes"]}]
    assert b.notes == ("entry 2 (Vasquez) repeats entry 1 (Vasquez): merged",
                       "entry 3 (vasquez) repeats entry 1 (Vasquez): merged")
    # The same blocklist written plainly hashes the same.
    plain = tmp_path / "plain.yaml"
    plain.write_text("concepts:\n  - {concept: Vasquez, kind: style}\n"
                     "  - {concept: Pip, kind: instance, anchor: circle, method: ca,\n"
                     "     paraphrases: [a yellow circle with eyes]}\n")
    assert load_blocklist(plain).sha256 == b.sha256


def test_a_folded_multi_line_name_reads_as_one_line(tmp_path):
    """YAML folding (`>`, a long quoted value over two lines) yields spaces and a final newline: accepted.
    A newline kept inside the name (`|`) is refused, as a tab is."""
    path = tmp_path / "b.yaml"
    path.write_text("concepts:\n  - concept: >\n      the midnight\n      lantern poster\n    kind: implicit\n"
                    "  - concept: \"Vasquez,\n      the painter\"\n    kind: style\n")
    assert [e.concept for e in load_blocklist(path).entries] == ["the midnight lantern poster", "Vasquez, the painter"]
    path.write_text("concepts:\n  - concept: |\n      the midnight\n      lantern poster\n    kind: implicit\n")
    with pytest.raises(BlocklistError, match=r"entry 1 \(the midnight\\nlantern poster\): concept: expected visible "
                                             r"text, got U\+000A LINE FEED at position 13"):
        load_blocklist(path)


def test_to_concepts_and_the_json_round_trip(tmp_path):
    b = load_blocklist(ROOT / "blocklists" / "default.yaml")
    assert Blocklist.from_json(b.to_json()) == b
    assert json.loads(b.to_json())["sha256"] == b.sha256
    concepts = b.to_concepts()
    assert all(isinstance(c, Concept) for c in concepts)
    assert (concepts[0].text, concepts[0].kind, concepts[0].anchor) == ("Pip", "instance", "circle")
    assert concepts[2].reference_images == (Path(b.entries[2].reference_images[0]),)
    assert concepts[2].paraphrases == b.entries[2].paraphrases
    assert Blocklist.key(Entry(concept="PIP", kind="instance")) == "pip"


def test_a_release_blocklist_reads_back_with_the_same_hash():
    """The release stage names reference images by file name and content hash; hash and diff agree."""
    from erasure.release import _portable_blocklist

    b = load_blocklist(ROOT / "blocklists" / "default.yaml")
    released = Blocklist.from_json(json.dumps(_portable_blocklist(json.loads(b.to_json()))))
    assert released.entries[2].reference_images[0].startswith("midnight-lantern.png sha256:")
    assert released.sha256 == b.sha256
    assert diff(b, released)["unchanged"] == [e.concept for e in b.entries]


def test_diff_added_removed_changed_unchanged():
    def bl(*entries):
        return Blocklist(entries=tuple(Entry(**e) for e in entries))

    v, p, f = ({"concept": "Vasquez", "kind": "style"}, {"concept": "Pip", "kind": "instance"},
               {"concept": "with a golden frame", "kind": "implicit"})
    d = diff(bl(f, v, p | {"anchor": "circle"}), bl({"concept": "Bobo", "kind": "instance"}, p,
                                                    {"concept": "vasquez", "kind": "style"}, {"concept": "Zuzu",
                                                                                               "kind": "instance"}))
    assert d == {"added": ["with a golden frame"], "removed": ["Bobo", "Zuzu"], "changed": ["Vasquez", "Pip"],
                 "unchanged": []}  # Vasquez: its case changed
    assert diff(bl(v, p), bl(p, v)) == {"added": [], "removed": [], "changed": [], "unchanged": ["Vasquez", "Pip"]}
    assert diff(bl(v), None) == {"added": ["Vasquez"], "removed": [], "changed": [], "unchanged": []}


def test_a_concept_with_an_invisible_character_is_refused_wherever_it_is_built():
    """Concept itself refuses them (erasure erase builds Concepts from the command line, not a blocklist)."""
    with pytest.raises(ValueError, match="text\n.*expected visible text, got U\\+200B ZERO WIDTH SPACE at position 3"):
        Concept(text="Pi\u200bp", kind="instance")
    with pytest.raises(ValueError, match="paraphrases\n.*item 2: expected visible text, got U\\+001B ESCAPE"):
        Concept(text="Pip", kind="instance", paraphrases=("a yellow circle", "\x1b[1ma yellow circle"))
    # Spaces and line ends around a name are trimmed (a YAML block value ends in one), not refused.
    assert Concept(text=" Pip\n", kind="instance", anchor="\tcircle ").anchor == "circle"


def test_previews_of_huge_values_stay_short_and_cheap():
    start = time.perf_counter()
    for value in (set(range(10**6)), b"x" * 10**7, ["x" * 10**7], {"k": list(range(10**6))}, "y" * 10**7):
        assert len(preview(value)) <= 60
    assert time.perf_counter() - start < 0.5
    assert preview(set()) == "set()" and preview(frozenset({1})) == "{1}" and preview((1, "a")) == "(1, 'a')"
