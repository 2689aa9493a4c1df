"""Local servers that tests and benchmarks start on 127.0.0.1: a free port, an S3-compatible server (moto)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOCAL = "http://127.0.0.1"
"""Base URL of in-process test clients of the viewer: it answers loopback names only."""


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1 (for servers a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_s3_server() -> tuple[str, subprocess.Popen]:
    """moto's standalone S3 server on a free port; returns its endpoint once it accepts connections."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"http://127.0.0.1:{port}", server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def wait_for(condition: Callable[[], object], seconds: float, what: str, process: subprocess.Popen) -> None:
    """Poll `condition` each second until it holds, failing the test if `process` (the server it waits on)
    stops or `seconds` go by first."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, (
            f"{Path(process.args[0]).name} {process.args[1]} stopped while waiting for {what}"
        )
        assert time.monotonic() < deadline, f"no {what} after {seconds:.0f} s"
        time.sleep(1)
