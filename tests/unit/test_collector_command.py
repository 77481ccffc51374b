"""`flowtrail collector` refuses unsafe or incomplete settings with a message naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flowtrail.cli import main as cli_main
from flowtrail.collector.command import collector


def _run(tmp: Path, *args: str) -> tuple[int, str]:
    tokens = tmp / "tokens"
    tokens.write_text("host-a secret-a-0123456789abc\n")
    base = ["--tokens", str(tokens), "--data-dir", str(tmp / "data")]
    # Through the `flowtrail` command itself: it is what turns an error into exit status 2.
    result = CliRunner().invoke(cli_main, ["collector", *base, *args])
    return result.exit_code, result.output


def test_plaintext_only_on_loopback(tmp_path: Path) -> None:
    code, text = _run(tmp_path, "--plaintext", "--listen", "0.0.0.0:0")
    assert code == 2 and "--plaintext" in text and "loopback" in text  # README: bad input exits 2


def test_tls_files_are_required_without_plaintext(tmp_path: Path) -> None:
    code, text = _run(tmp_path, "--listen", "127.0.0.1:0")
    assert code == 2 and "--tls-cert" in text


def test_a_bad_listen_address_names_the_flag(tmp_path: Path) -> None:
    code, text = _run(tmp_path, "--listen", "127.0.0.1:http")
    assert code == 2 and "--listen" in text


def test_help_documents_every_option() -> None:
    result = CliRunner().invoke(collector, ["--help"])
    assert result.exit_code == 0
    for param in collector.params:
        if param.name != "help":
            assert param.help, f"option {param.name} has no help text"  # type: ignore[attr-defined]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_embedded_app_is_healthy_at_once_and_stops(tmp_path: Path, host: str) -> None:
    """CollectorApp as `flowtrail up` embeds it: plain HTTP on loopback, a caller's sink."""
    import json
    import urllib.request

    from flowtrail.collector.app import CollectorApp, CollectorOptions
    from flowtrail.collector.sink import ParquetSink

    tokens = tmp_path / "tokens"
    tokens.write_text("host-a secret-a-0123456789abc\n")
    options = CollectorOptions(
        data_dir=tmp_path / "data", tokens_file=tokens, host=host, port=0, plaintext=True
    )
    app = CollectorApp(options, sink=ParquetSink(tmp_path / "mine"))
    app.start()
    try:
        with urllib.request.urlopen(app.url() + "/healthz", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["ok"] is True
    finally:
        app.stop()
    assert (tmp_path / "data" / "wal").is_dir()
