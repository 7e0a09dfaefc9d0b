"""The README's retraining block, as written, at toy sizes, writing outside the package (see
tests/readme_walk.py)."""

import pytest

from readme_walk import ROOT, block, session  # noqa: F401

pytestmark = pytest.mark.slow


def test_retraining_block(session):
    for command in block("### Retraining it"):
        session.run(command)
    assert (session.tmp / "model" / "model_index.json").is_file()
    assert (session.proj / "benchmarks" / "results" / "miniworld_card.md").read_text() != \
        (ROOT / "benchmarks" / "results" / "miniworld_card.md").read_text()  # re-measured in the copy
