"""Run a child process with a deadline that holds for everything it started.

A tool that hangs (a notebook runner waiting on a kernel, a browser) is killed with its whole
process group at the deadline, so a hang fails a test quickly and leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["run_bounded"]


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own process group; kill the group and raise at ``timeout`` seconds.

    Raises:
        TimeoutError: the process did not finish in time (its group was killed).
    """
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise TimeoutError(f"{list(argv)[:4]} did not finish within {timeout} s") from exc
    return subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
