"""Loopback networking: a free port, waiting for a port to accept connections or a URL to answer 200."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> bool:
    """True once 127.0.0.1:port accepts a connection; False after `timeout` s or if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def wait_for_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bytes:
    """The body of the first 200 answer of GET `url`; RuntimeError if `proc` exits or `timeout` s pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited (code {proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return r.read()
        except OSError:  # refused, or an HTTP error status (HTTPError is an OSError): not ready yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.2)
