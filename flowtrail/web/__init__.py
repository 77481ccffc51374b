"""The web console's static files (HTML, CSS, JavaScript), shipped in the package.

Hand-written, no third-party code and nothing fetched at run time: the page asks the same
/api/* endpoints (and /healthz) as any other client, so the console, the API and `flowtrail
query` answer from the same query functions. `console_file(path)` maps a request path to a
file's bytes and content type: `/` is index.html, `/static/NAME` one of the files here; any
other path is None (the server answers it as before).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything the page loads comes from this server; no inline script, no other origin.
CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


@cache
def _files() -> dict[str, tuple[bytes, str]]:
    """File name → (bytes, content type), read once from the package."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files(__name__).iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            out[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return out


def console_file(path: str) -> tuple[bytes, str] | None:
    """The console's answer to a request path (query string removed), or None."""
    if path == "/":
        return _files().get("index.html")
    if path.startswith("/static/"):
        return _files().get(path.removeprefix("/static/"))  # exact names only: no traversal
    return None


def console_paths() -> list[str]:
    """Every path `console_file` answers."""
    return ["/", *(f"/static/{name}" for name in sorted(_files()))]
