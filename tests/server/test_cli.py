"""`saguaro serve`: flag errors, a failed load, and a real `python -m saguaro serve` process that
serves with an API key, finishes its request in flight on SIGTERM and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from live_server import metric
from saguaro.cli import main as cli


def one_error_line(capsys, *argv) -> str:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.startswith("saguaro: error: ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err + out, err
    return lines[0]


def test_serve_help_lists_the_server_flags(capsys):
    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--max-batch", "--max-queue", "--served-model-name", "--api-key", "--target",
                 "--draft", "--mode", "--ssd-worker"):
        assert flag in out


@pytest.mark.parametrize("flags, match", [(["--port", "70000"], "--port"), (["--max-batch", "0"], "--max-batch"),
                                          (["--max-queue", "-1"], "--max-queue"), (["--port", "x"], "--port")])
def test_bad_flags_are_one_line_errors(capsys, flags, match):
    assert match in one_error_line(capsys, "serve", "--target", "random:tiny", *flags)


def test_failed_load_stops_the_server_with_one_line(capsys):
    line = one_error_line(capsys, "serve", "--target", "random:nosuchshape", "--port", "0")
    assert "random:nosuchshape" in line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_in_flight_and_exits_0(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = {"Authorization": "Bearer s3cret"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saguaro", "serve", "--target", "random:tiny", "--dtype", "float32", "--threads", "1",
         "--port", str(port), "--max-batch", "2", "--api-key", "s3cret", "--served-model-name", "cli-tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers=key).json()["data"][0]["id"] == "cli-tiny"

        got = {}

        def long_request():  # about a second of decoding
            got["r"] = httpx.post(url + "/v1/completions", headers=key, timeout=60,
                                  json={"prompt": "hi", "max_tokens": 1500, "ignore_eos": True})

        client = threading.Thread(target=long_request)
        client.start()
        while metric(httpx.get(url + "/metrics", headers=key).text, "saguaro:num_requests_running") < 1:
            assert client.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        client.join(60)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert got["r"].status_code == 200 and got["r"].json()["usage"]["completion_tokens"] == 1500
    assert "Traceback" not in err and "engine closed" in err
