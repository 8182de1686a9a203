"""Start `python -m engine.serve` in a subprocess on a free port and wait until it accepts requests (tests,
benchmarks, scripts that need a server for a while).

    with launch.server(["--model", "smollm2-135m"]) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="-")

The server picks its own port (`--port 0`) and announces it in its log; we read the port from that line, so
there is no bind-then-close race. The log goes to a file (`srv.log_path`), which callers may read.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_READY = re.compile(r"engine\.serve: listening on (http://\S+:\d+)")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # http://host:port
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def server(args: list[str], timeout: float = 300.0, env: dict | None = None, log_dir: str | None = None,
           launcher: list[str] | None = None):
    """`launcher`: what runs `-m engine.serve` (default this Python; e.g. torchrun's command for --tp)."""
    env = dict(os.environ if env is None else env)
    env.pop("TRITON_INTERPRET", None)  # the server must run the engine's normal CPU paths, not Triton's interpreter
    d = Path(log_dir or tempfile.mkdtemp(prefix="engine-serve-"))
    log_path = d / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*(launcher or [sys.executable]), "-m", "engine.serve", "--port", "0", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    try:
        deadline, url = time.monotonic() + timeout, None
        while url is None:
            m = _READY.search(log_path.read_text(errors="replace"))
            if m:
                url = m.group(1)
            elif proc.poll() is not None:
                raise RuntimeError(f"engine.serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            elif time.monotonic() > deadline:
                raise TimeoutError(f"engine.serve did not start in {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
            else:
                time.sleep(0.2)
        yield Server(proc, url, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
