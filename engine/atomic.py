"""Writes that never lose what a user owns: output paths checked against the inputs, writability and free space checked
before the work starts, and folders/files written under a temporary sibling name and renamed into place.

    guard_out(out, inputs=[adapter, base], overwrite=a.overwrite)       # refuse out == / inside / around an input
    with staged_dir(out, overwrite=True) as tmp:                         # write into tmp; renamed to out on success
        save_everything(tmp)

A process killed while writing leaves the previous `out` (or nothing) plus a hidden `.NAME.tmp-PID` sibling, which
no loader looks at and the next write to the same `out` removes. With `overwrite` the old folder is swapped out only
after the new one is complete (one atomic renameat2(RENAME_EXCHANGE) on Linux; elsewhere two renames).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from pathlib import Path


class OutputError(ValueError):
    """An output path that would lose data or cannot be written; the message is one line for the CLI."""


def _real(p) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def guard_out(out, inputs=(), overwrite: bool = False, kind: str = "folder") -> Path:
    """Refuse an output that is, lies inside, or contains an input (whatever `overwrite` says), a folder where a file
    goes (or the reverse), or an existing non-empty output without `overwrite`. Nothing is created here."""
    o = _real(out)
    for i in inputs:
        if i is None or not Path(str(i)).expanduser().exists():
            continue  # a preset or Hub id is no path of the user's
        r = _real(i)
        if _within(o, r) or _within(r, o):
            rel = "is" if o == r else "is inside" if _within(o, r) else "contains"
            raise OutputError(f"{out} {rel} the input {i}: writing there could destroy it (--overwrite does not "
                              "change this); choose another output path")
    if kind == "folder":
        if o.exists() and not o.is_dir():
            raise OutputError(f"{out} is a file, not a directory")
        if o.is_dir() and any(o.iterdir()) and not overwrite:
            raise OutputError(f"{out} is not empty: pass --overwrite to replace its contents, or another folder")
    else:
        if o.is_dir():
            raise OutputError(f"{out} is a directory, not a file")
        if o.exists() and not overwrite:
            raise OutputError(f"{out} exists: pass --overwrite to replace it")
    ensure_writable(o.parent)
    return o


def ensure_writable(directory, need_bytes: int = 0) -> None:
    """Fail fast, in one line, when `directory` (or its nearest existing ancestor, where it would be created) is not
    writable or has less than `need_bytes` free."""
    d = _real(directory)
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise OutputError(f"cannot create {directory}: {d} is not a directory")
    try:  # os.access misses read-only mounts under root; creating a file is the real test
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        raise OutputError(f"cannot write to {d}: {e.strerror or e}") from None
    free = shutil.disk_usage(d).free
    if need_bytes and free < need_bytes:
        raise OutputError(f"not enough free space in {d}: {need_bytes / 2**30:.2f} GiB needed, "
                          f"{free / 2**30:.2f} GiB free")


def _tmp_name(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def _clear_stale(path: Path) -> None:
    """Remove leftovers of killed writes to `path` (our own hidden names only, and only of dead processes)."""
    for p in path.parent.glob(f".{glob_escape(path.name)}.*-*"):
        tag, _, pid = p.name.rpartition("-")
        if not pid.isdigit() or not tag.endswith((".tmp", ".old")) or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of ours from an earlier attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the call is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Move the complete `tmp` (file or folder) to `final`, replacing what is there only now."""
    if final.is_dir() and not final.is_symlink():
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        else:
            old = _tmp_name(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def staged_dir(out, overwrite: bool = False):
    """Yield an empty hidden sibling folder of `out`; on success it becomes `out` (the old one is replaced only
    then, and only with `overwrite`); on an exception it is removed and `out` is untouched."""
    final = Path(out).expanduser()
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise OutputError(f"{out} is not empty: pass --overwrite to replace its contents, or another folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    tmp = _tmp_name(final, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):  # the data reaches the disk before the rename makes it visible
            if f.is_file():
                _fsync_file(f)
        publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_file(path, overwrite: bool = True):
    """Yield a hidden sibling path of `path` to write; on success it replaces `path` (atomically)."""
    final = Path(path).expanduser()
    if final.exists() and not overwrite:
        raise OutputError(f"{path} exists: pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    tmp = _tmp_name(final, "tmp")
    try:
        yield tmp
        _fsync_file(tmp)
        publish(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    """Write a small text file atomically (a reader sees the old content or the new one, never half)."""
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync_file(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
