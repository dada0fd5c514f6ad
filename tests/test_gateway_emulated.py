"""`llmsched serve --emulated 2` as a process: the official openai client through it; SIGTERM drains."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

import llmsched.emulator.server  # noqa: F401  (our own module: an ImportError must fail, not skip)

LAUNCH = "import typer; from llmsched.gateway.cli import serve_cmd; typer.run(serve_cmd)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served() -> object:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "--emulated", "2", "--emulator-speed", "20", "--router", "round-robin",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llmsched serve exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("llmsched serve did not become healthy in 60 s")
    yield proc, url
    if proc.poll() is None:
        proc.kill()


def test_openai_client_through_serve_emulated(served: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4)
    assert r.usage is not None and r.usage.completion_tokens == 4 and r.choices[0].text
    c = client.chat.completions.create(model=model, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert c.choices[0].message.content and c.usage is not None and c.usage.completion_tokens == 3
    chunks = list(client.completions.create(model=model, prompt="Count:", max_tokens=5, stream=True))
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].text) == 5
    stream = client.chat.completions.create(model=model, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "hello there"}])
    chunks2 = list(stream)
    assert chunks2[-1].usage is not None and chunks2[-1].usage.completion_tokens == 6
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="x", max_tokens=0)
    metrics = httpx.get(url + "/metrics").text
    assert 'llmsched_gateway_requests_total{endpoint="/v1/completions",status="200"} 2.0' in metrics
    # Graceful shutdown: SIGTERM drains and exits 0.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    out = proc.stdout.read() if proc.stdout else ""
    assert "draining" in out
