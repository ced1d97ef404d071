"""Reports over http beside `tokprob server`, so the link artifact of a flow run opens in
the browser showing the Prefect UI (browsers refuse `file://` links from an http page).

Only the data folder's `reports/` and `artifacts/` (whose figures the Markdown reports
link to) are served, read-only, on the host the Prefect server listens on.
"""

from __future__ import annotations

import functools
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SERVED = ("reports", "artifacts")
"""Folders of the data folder a browser may read."""


class _ReportsHandler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if not self._allowed():
            self.send_error(404, "Only reports and their figures are served here.")
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        if not self._allowed():
            self.send_error(404)
            return
        super().do_HEAD()

    def _allowed(self) -> bool:
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        return bool(parts) and parts[0] in SERVED and ".." not in parts

    def list_directory(self, path):  # no browsing of the store
        self.send_error(404)
        return None

    def log_message(self, format: str, *args: object) -> None:  # quiet: the UI logs enough
        return


def start_reports_server(data_dir: Path, host: str, port: int) -> tuple[ThreadingHTTPServer,
                                                                         str]:
    """Serve the data folder's reports on `port`, or on a free port when it is taken, in
    a background thread; returns the server and its base URL."""
    handler = functools.partial(_ReportsHandler, directory=str(data_dir))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("ReportsServer", (ThreadingHTTPServer,), {"address_family": family})
    try:
        server = server_class((host, port), handler)
    except OSError:
        server = server_class((host, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="tokprob-reports", daemon=True).start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return server, f"http://{shown}:{server.server_address[1]}"
