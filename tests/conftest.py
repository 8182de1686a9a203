"""Test-wide setup.

Triton decides at decoration time whether a kernel runs in its interpreter, so TRITON_INTERPRET must be set
before `coalm_kernels` is imported. On a machine without CUDA we set it for the whole session; the kernel
dispatch reads it again at call time, so every test outside tests/kernels removes it and the engine runs on
the plain-torch `_ref` paths, as it does for users on a CPU.
"""

import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _kernel_dispatch(request, monkeypatch):
    if "tests/kernels" not in str(request.node.path).replace(os.sep, "/"):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    yield


@pytest.fixture
def one_thread():
    """A context manager running in-process torch on one thread: beside a server subprocess and another pytest
    worker, two OpenMP threads lose their time slices (generation ran 8x slower here, 96 s against 12 s)."""

    @contextlib.contextmanager
    def ctx():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    return ctx


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
