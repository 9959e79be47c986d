"""The hub probe behind "not in the local cache and the hub cannot be reached": a real TCP connection to
HF_ENDPOINT, or to the proxy the environment routes it through (as the hub library's requests would go),
so a user behind a proxy is not refused a download that would work."""

from __future__ import annotations

import socket

import pytest

from llava_avc.backends.checkpoints import hub_unreachable_reason

PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY",
                   "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_settings(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listening():
    """A port on 127.0.0.1 that accepts connections."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def closed():
    """A port on 127.0.0.1 nothing listens on."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_a_reachable_endpoint_passes_and_a_closed_one_is_named(monkeypatch, listening, closed):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening}")
    assert hub_unreachable_reason(timeout=2) is None
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    reason = hub_unreachable_reason(timeout=2)
    assert reason.startswith(f"no connection to http://127.0.0.1:{closed}: ") and "proxy" not in reason


def test_behind_a_proxy_the_proxy_is_what_must_answer(monkeypatch, listening, closed):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # never resolved: requests go to the proxy
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening}")
    assert hub_unreachable_reason(timeout=2) is None
    monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{closed}")  # no scheme, as people often write it
    reason = hub_unreachable_reason(timeout=2)
    assert reason.startswith(f"no connection to https://hub.invalid through the proxy 127.0.0.1:{closed}: ")


def test_no_proxy_sends_the_probe_straight_to_the_endpoint(monkeypatch, listening):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening}")
    monkeypatch.setenv("NO_PROXY", "hub.invalid")
    reason = hub_unreachable_reason(timeout=2)
    assert reason is not None and reason.startswith("no connection to https://hub.invalid: ")
