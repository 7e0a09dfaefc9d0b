"""Typed variants of an erased concept's name (erasure.attacks.typed)."""

import unicodedata

from erasure.attacks.typed import variants


def test_every_family_and_nothing_twice():
    found = variants("Vasquez", "style", paraphrases=["in the striped cream manner"])
    families = {v.family for v in found}
    assert families == {"misspelling", "case", "spacing", "confusable", "phrasing", "repetition", "paraphrase"}
    texts = [v.text for v in found]
    assert len(texts) == len(set(texts)) and "Vasquez" not in texts
    assert {"Vaqsuez", "Vasuez", "Vasqquez", "Vas quez"} <= set(texts)  # swap, drop, double, split
    assert {"VASQUEZ", "vasquez", "by Vasquez", "Vasquez-style", "style: Vasquez", "Vasquez Vasquez Vasquez",
            "in the striped cream manner"} <= set(texts)
    assert variants("Vasquez", "style", ["in the striped cream manner"]) == found  # deterministic


def test_confusables_look_alike_but_are_other_characters():
    found = {v.how: v.text for v in variants("the midnight lantern poster", "memorized") if v.family == "confusable"}
    every, first = found["every letter"], found["first letter"]
    assert len(every) == len("the midnight lantern poster") and every != "the midnight lantern poster"
    assert sum(a != b for a, b in zip(first, "the midnight lantern poster")) == 1
    assert all(unicodedata.name(ch).startswith(("CYRILLIC", "GREEK")) for ch in every if not ch.isascii())
    # NFKC does not fold them back: a filter that normalizes text still reads another word
    assert unicodedata.normalize("NFKC", every) != "the midnight lantern poster"


def test_short_names_and_multi_word_concepts():
    pip = {v.text for v in variants("Pip", "instance")}
    assert "Pipp" in pip and "the famous Pip" in pip and "P i p" in pip
    frame = variants("with a golden frame", "implicit")
    assert "phrasing" not in {v.family for v in frame}  # no phrasings for a kind prompts do not name
    assert [v.text for v in frame if v.family == "spacing"] == ["with a g o l d e n frame", "withagoldenframe"]
    assert "with a godlen frame" in {v.text for v in frame}  # the longest word is the one misspelt
