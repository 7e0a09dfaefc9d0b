"""The README's scheduling block, as written, at toy sizes (see tests/readme_walk.py)."""

import pytest

from readme_walk import _answers, block, session  # noqa: F401

pytestmark = pytest.mark.slow


def test_scheduling_block(session):
    for command in block("Against a local server:"):
        if "prefect server start" in command:
            session.start(command, _answers("http://127.0.0.1:4200/api/health"))
        elif "flows/deploy.py" in command:
            session.start(command, lambda log: "serv" in log.lower() and "nightly-blocklist" in log)
        else:
            res = session.run(command, timeout=900)
            if "schedule_demo" in command:
                assert "COMPLETED" in res.stdout.upper()
    session.stop_all()
