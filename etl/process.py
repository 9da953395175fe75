"""Run an external command from a step: output streamed to the task log, whole tree killed on stop."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import psutil

from etl import runtime
from etl.errors import CommandFailed, StepStopped

logger = logging.getLogger(__name__)


def kill_tree(pid: int, timeout: float = 3.0) -> None:
    """Kill a process and every descendant (listed before killing, so orphans are not missed)."""
    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)


def _shown(arg: str, limit: int = 80) -> str:
    arg = arg.replace("\n", " ").strip()
    return arg if len(arg) <= limit else arg[: limit - 3] + "..."


def _popen_isolation() -> dict:
    # Its own process group/session, so a stop can kill the tree without touching the server.
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    if sys.platform.startswith("linux") and os.environ.get("ETL_KILL_WITH_PARENT") == "1":
        # On a Celery worker host the command also dies if its pool process is killed (kill -9).
        return {"start_new_session": True, "preexec_fn": _die_with_parent}
    return {"start_new_session": True}


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_command(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout_seconds: float | None = None,
    encoding: str = "utf-8",
) -> int:
    """Run ``args``, log each output line, return 0 or raise CommandFailed/StepStopped."""
    name = Path(args[0]).name
    logger.info("running %s", " ".join(_shown(str(a)) for a in args))
    proc = subprocess.Popen(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        encoding=encoding,
        errors="replace",
        **_popen_isolation(),
    )
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        kill_tree(proc.pid)

    timer = threading.Timer(timeout_seconds, on_timeout) if timeout_seconds else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        with runtime.on_stop(lambda: kill_tree(proc.pid)):
            assert proc.stdout is not None
            for line in proc.stdout:
                logger.info("[%s] %s", name, line.rstrip("\r\n"))
            returncode = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            kill_tree(proc.pid)
    if runtime.stop_requested():
        raise StepStopped(f"{name} was killed because the task was asked to stop")
    if timed_out.is_set():
        raise CommandFailed(f"{name} did not finish within {timeout_seconds:g} s and was killed")
    if returncode != 0:
        raise CommandFailed(f"{name} exited with status {returncode}")
    logger.info("%s finished", name)
    return returncode
