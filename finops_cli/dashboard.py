"""`finops-ml dashboard`: serve the latest run's dashboard (OUT/report.html) on this machine."""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

import typer
from rich.console import Console

from finops_ml.errors import FinopsError

console = Console()
# What the dashboard server hands out: the page and the run's machine-readable results, nothing else of OUT.
SERVED = {"/": "report.html", "/report.html": "report.html", "/summary.json": "summary.json",
          "/value.json": "value.json", "/anomalies.csv": "anomalies.csv"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        name = SERVED.get(self.path.split("?", 1)[0])
        if name is None or not (Path(self.directory) / name).is_file():
            self.send_error(404, "Not found: the dashboard serves /, /summary.json, /value.json, /anomalies.csv")
            return
        self.path = "/" + name
        super().do_GET()

    do_HEAD = do_GET

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        console.print(f"[dim]{self.address_string()} {format % args}[/]")


def make_server(out: Path, host: str = "127.0.0.1", port: int = 8050) -> http.server.ThreadingHTTPServer:
    """The dashboard server over OUT (a FinopsError, one sentence, when OUT holds no dashboard or the port is
    taken)."""
    if not 0 <= port <= 65535:
        raise FinopsError(f"--port {port} is not a TCP port; give 1-65535 (or 0 for any free port).")
    if not (out / "report.html").is_file():
        raise FinopsError(f"{out} holds no dashboard (report.html); run `finops-ml run --out {out}` first.")
    handler = functools.partial(_Handler, directory=str(out))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise FinopsError(f"Cannot listen on {host}:{port} ({exc.strerror}); pick another --port.") from None


def dashboard(
    out: Path = typer.Option(Path("out"), help="The run's output directory (finops-ml run --out DIR)."),
    port: int = typer.Option(8050, help="Port on 127.0.0.1 (0: any free port)."),
):
    """Serve the latest run's dashboard (OUT/report.html) on http://127.0.0.1:PORT/ until Ctrl-C."""
    server = make_server(out.resolve(), "127.0.0.1", port)
    console.print(f"dashboard of {out / 'report.html'} on http://127.0.0.1:{server.server_address[1]}/ "
                  "(Ctrl-C to stop)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
