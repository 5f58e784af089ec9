"""The test suite's own rules: no test reaches the network (the guard in tests/conftest.py fails it,
naming the host), and heavy tests carry the registered ``slow`` marker (``pytest -m "not slow"``)."""

from __future__ import annotations

import importlib
import socket

import pytest

from conftest import NetworkUsed


@pytest.mark.parametrize("reach", [
    lambda: socket.create_connection(("huggingface.co", 443), timeout=1),
    lambda: socket.getaddrinfo("example.com", 80),
    lambda: socket.socket().connect(("93.184.216.34", 80)),
])
def test_reaching_another_host_fails_the_test(reach):
    with pytest.raises(NetworkUsed, match="must not touch the network"):
        reach()


def test_this_machine_stays_reachable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert socket.getaddrinfo("localhost", 80)


@pytest.mark.parametrize("module, test", [
    ("test_demo", "test_demo_quick_runs_the_whole_pipeline"),
    ("test_gem_outputs", "test_the_readme_gem_recipe_runs_on_a_tiny_synthetic_world"),
    ("test_run_locks", "test_a_second_training_process_on_a_running_run_folder_is_refused"),
])
def test_slow_is_a_registered_marker_on_the_heavy_tests(pytestconfig, module, test):
    assert any(line.startswith("slow:") for line in pytestconfig.getini("markers"))
    marks = getattr(getattr(importlib.import_module(module), test), "pytestmark", [])
    assert "slow" in [m.name for m in marks]
