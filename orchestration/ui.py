"""`circuitdb ui`: Dagster's webserver and daemon over the store's persistent instance.

Both run from this interpreter's own folder (a virtualenv needs no activation), each in its own process
group with SIGINT and SIGTERM at their defaults (a shell's background job would hand them down ignored),
and stop together: Ctrl-C or SIGTERM to `circuitdb ui` stops both groups, code servers included, and
with `DAGSTER_HOME` set Dagster leaves no temporary home behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from circuitdb.errors import CircuitDBError
from orchestration.instance import EFFECTIVE_CONFIG, ensure_home


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise CircuitDBError(f"{path} not found: install the project into this environment (make install)")
    return str(path)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM to each process group (webserver, daemon and the code servers they started), then SIGKILL to
    whatever of them still runs after `grace` seconds: nothing is left behind."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _check_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CircuitDBError(f"cannot serve on {host}:{port} ({exc.strerror}); choose --port/--host") from None


def serve(store: Path, config_file: str | None, host: str, port: int) -> None:
    """Run the UI until interrupted (Ctrl-C, SIGTERM); one of its processes dying is an error."""
    _check_port(host, port)
    home = ensure_home(store)
    workspace = home / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": "orchestration.definitions"}]}))
    env = dict(os.environ, DAGSTER_HOME=str(home.resolve()), CIRCUITDB_STORE=str(Path(store).resolve()))
    effective = Path(store) / EFFECTIVE_CONFIG
    chosen = effective if effective.is_file() else Path(config_file) if config_file else None
    if chosen is not None:
        env["CIRCUITDB_CONFIG"] = str(chosen.resolve())
    commands = [
        [_tool("dagster-webserver"), "-h", host, "-p", str(port), "-w", str(workspace)],
        [_tool("dagster-daemon"), "run", "-w", str(workspace)],
    ]
    processes = [
        subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_default_signals) for command in commands
    ]
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: stopping.append(number))
    print(f"Dagster UI on http://{host}:{port} (instance {home}); Ctrl-C stops it", flush=True)
    try:
        while not stopping and all(process.poll() is None for process in processes):
            time.sleep(0.2)
    finally:
        _stop(processes)
    if not stopping:
        raise CircuitDBError("the Dagster webserver or daemon stopped on its own; its messages are above")
