"""The test suite's network guard (tests/conftest.py): a test that reaches another host fails, naming it."""

from __future__ import annotations

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
