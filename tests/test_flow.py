"""The Prefect flow as a deployment runs it: `flows/deploy.py` serves it, and each scheduled run
starts in a new process from a pickled copy of the flow (scripts/schedule_demo.py shows a whole run)."""

import importlib.util
from pathlib import Path

import cloudpickle

ROOT = Path(__file__).resolve().parent.parent


def test_the_served_flow_pickles_by_value():
    # Prefect loads the flow from its file, so cloudpickle copies the module's functions and every
    # global they reach; a lock among them crashed each scheduled run before it started.
    # Loaded under a name no process can import, as Prefect does, so it is pickled by value.
    spec = importlib.util.spec_from_file_location("served_release_flow", ROOT / "flows" / "release_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    restored = cloudpickle.loads(cloudpickle.dumps(module.release_flow))
    assert restored.name == "erasure-release" and restored.fn.__module__ == "served_release_flow"


def test_tasks_retry_transient_failures_but_not_bad_input():
    from prefect.states import Failed

    from erasure.blocklist import BlocklistError
    from erasure.models import ModelLoadError

    spec = importlib.util.spec_from_file_location("release_flow_retries", ROOT / "flows" / "release_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._transient(None, None, Failed(data=OSError("disk full")))
    assert not module._transient(None, None, Failed(data=BlocklistError("entry 1: kind: expected ...")))
    assert not module._transient(None, None, Failed(data=ModelLoadError("--model 'x': no such folder")))
