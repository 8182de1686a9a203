"""A test launcher for multi-process jobs: torchrun itself, with its own race-free rendezvous, and no stragglers.

    rc, out, err = run_torchrun(4, ["-m", "engine.train", ...], timeout=120)

- Rendezvous: `--rdzv-backend c10d --rdzv-endpoint 127.0.0.1:0` (the multi-node command form, on one node): the
  agent's TCP store binds port 0 and keeps it, and the workers reuse that store, so two tests running at once
  (pytest -n 2) never race for a port (a bind-then-close port pick does).
- Cleanup on every exit path: every process of the job carries COALM_TEST_JOB=<uuid> in its environment; when the
  job ends, times out, or the test fails, the agent gets SIGTERM (torchrun then stops its workers), and any process
  still carrying the marker is killed by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def job_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _marked(token: str) -> list[int]:
    """Pids of live processes whose environment holds COALM_TEST_JOB=token (this job's, and only this job's)."""
    needle = f"COALM_TEST_JOB={token}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:  # gone, or not ours
                pass
    return pids


def _kill_job(proc: subprocess.Popen, token: str):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # torchrun's agent stops its workers on SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    deadline = time.monotonic() + 10
    while (pids := _marked(token)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def run_torchrun(nproc: int, argv: list[str], timeout: float, env: dict | None = None,
                 torchrun_args: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Run `torchrun ... argv` with `nproc` local processes; (return code, stdout, stderr). A job still running
    after `timeout` seconds is killed and reported as return code None's stand-in -9 with its output so far."""
    token = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", token, "--max-restarts", "0",
           *torchrun_args, *map(str, argv)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**(env or job_env()), "COALM_TEST_JOB": token},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        _kill_job(proc, token)
        out, err = proc.communicate()
        return -9, out, err + f"\n[test launcher: killed after {timeout} s]"
    finally:
        _kill_job(proc, token)
