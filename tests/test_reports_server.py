"""Reports over http beside `tokprob server`, and the report as the Prefect UI shows it."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from cli.reports_server import start_reports_server
from tasks.runs import ui_markdown


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def served(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "encoding-run.html").write_text("<html>report</html>")
    (tmp_path / "artifacts" / "figures" / "k").mkdir(parents=True)
    (tmp_path / "artifacts" / "figures" / "k" / "pca.png").write_bytes(b"\x89PNG")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "model.whl").write_bytes(b"not for the browser")
    server, url = start_reports_server(tmp_path, "127.0.0.1", 0)
    yield url
    server.shutdown()


def test_reports_and_their_figures_are_served(served):
    assert _status(f"{served}/reports/encoding-run.html") == 200
    assert _status(f"{served}/artifacts/figures/k/pca.png") == 200


@pytest.mark.parametrize("path", ["/downloads/model.whl", "/", "/reports/",
                                  "/reports/../downloads/model.whl", "/prefect/prefect.db"])
def test_nothing_else_of_the_data_folder_is(served, path):
    assert _status(f"{served}{path}") == 404


def test_a_taken_port_falls_back_to_a_free_one(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server, url = start_reports_server(tmp_path, "127.0.0.1", port)
        try:
            assert not url.endswith(f":{port}")
        finally:
            server.shutdown()


def test_the_ui_markdown_links_figures_to_the_reports_server_or_names_them():
    markdown = "# r\n\n![PCA](../artifacts/figures/k/pca.png)\n"
    assert "](http://h:1/artifacts/figures/k/pca.png)" in ui_markdown(markdown, "http://h:1")
    offline = ui_markdown(markdown, None)
    assert "![" not in offline and "`../artifacts/figures/k/pca.png`" in offline
