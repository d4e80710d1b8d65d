"""Shared fixtures: a clean environment for every test, and one embedded cluster + deployment.

The real stack is expensive (a cluster ~20 s, a vLLM deployment ~65 s on 2 cores), so tests that
need it share one session-scoped cluster and deployment, torn down at the end (also on failure).
Tests that start their own cluster (cluster tests, notebooks, browser) are ordered *before* the
shared ones, so two embedded clusters never run at once.
"""

from __future__ import annotations

import os

import pytest
from _wait import until

# Order of test groups: fast unit tests, then tests with their own clusters, then the shared one.
_OWN_CLUSTER_FILES = ("test_cluster.py", "test_notebooks.py", "test_browser.py", "test_cli_run.py")
_SHARED_CLUSTER_FILES = ("test_serve_live.py", "test_experiment.py", "test_faults.py", "test_serve_modes.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in _SHARED_CLUSTER_FILES:
            return 2 + _SHARED_CLUSTER_FILES.index(name)
        if name in _OWN_CLUSTER_FILES:
            return 1
        return 0

    items.sort(key=rank)  # stable: keeps file order inside a group


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the caller's LABKIT_* / OPENAI_* settings from every test."""
    for name in list(os.environ):
        if name.startswith(("LABKIT_", "OPENAI_")) and name not in ("LABKIT_REQUIRE_BROWSER",):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The offline tiny model (cached)."""
    from labkit.models import make_tiny_model

    return make_tiny_model()


@pytest.fixture(scope="session")
def lab_cluster():
    """One embedded 3-node cluster for every test that needs the real stack."""
    from labkit.cluster import find_ray_processes, start_cluster

    # start_timeout_s is a hang guard: the nodes register in seconds; a loaded machine can take minutes
    handle = start_cluster(start_timeout_s=300.0)
    try:
        yield handle
    finally:
        handle.stop()
    # stop() kills what outlives its grace period; a process just killed may take a moment to go
    until(lambda: find_ray_processes(handle._session_marker()) == [], "no Ray process of the session left", 120)


@pytest.fixture(scope="session")
def lab_deployment(lab_cluster):
    """The chapter's smallest example: 2 vLLM replicas on different nodes, proxies on every node."""
    from labkit.serve import deploy, topology_preset

    deployment = deploy(topology_preset("distributed"))
    yield deployment
