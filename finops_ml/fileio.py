"""Writing outputs so that a crash never leaves a half-written file that looks complete."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from finops_ml.errors import FinopsError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes without error."""
    path = Path(path)
    if path.is_dir():
        raise FinopsError(f"{path} is a folder; give the path of a file to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))


def strict(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None: strict JSON (summary.json, value.json, references),
    which any JSON parser reads (a metric with nothing to measure, e.g. the precision of no applied labels)."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, float):  # numpy floats are floats too
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar (int, bool, float32)
        return strict(value.item())
    return value


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


LOCK_FILE = ".finops.lock"


@contextmanager
def exclusive_lock(directory: str | os.PathLike, what: str, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold DIRECTORY/.finops.lock for the block, so two writers never interleave in one directory.

    The operating system releases the lock when its process dies (kill -9 included): no stale lock survives a crash.
    With `wait_s` 0 a second writer is refused at once with a sentence naming the holder; otherwise it waits that long
    for its turn (writers that are quick and may collide, e.g. two registrations, are serialised). The holder removes
    the file when it is done, so a directory holds only its outputs.
    """
    import time

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    deadline = time.monotonic() + wait_s
    while True:
        f = open(path, "a+")
        if _try_lock(f):
            try:  # the file may have been removed by the previous holder between our open and our lock: retry
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
        else:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if time.monotonic() >= deadline:
                f.close()
                raise FinopsError(f"{directory} is in use by {holder}; wait for it to finish or choose another "
                                  f"directory for this {what}.")
            time.sleep(0.05)
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"a {what} (pid {os.getpid()})")
        f.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # still holding the lock: nobody can hold this inode meanwhile
        f.close()  # closing the file releases the lock


def _try_lock(f) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
