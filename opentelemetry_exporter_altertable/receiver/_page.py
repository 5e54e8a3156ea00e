"""``GET /``: a page to watch events arrive, browse identities and run read-only SQL.

Its one job is serving three static files shipped in the package (``page/``). The page reads
everything through ``POST /query`` (same origin, the same read-only path and auth as any
client), so it can write nothing, and it renders every value with ``textContent``. The headers
forbid what the page does not need: a strict ``Content-Security-Policy`` (no inline script, no
other origin, no framing), ``X-Content-Type-Options: nosniff``, no referrer, no caching.
"""

from __future__ import annotations

from importlib import resources

from ._app import Application, Request, Response

__all__ = ["PAGE_FILES", "SECURITY_HEADERS", "add_page_routes"]

PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


def _static(name: str, content_type: str) -> Response:
    data = resources.files(__package__).joinpath("page").joinpath(name).read_bytes()
    return Response(200, data, headers=SECURITY_HEADERS, content_type=content_type)


def add_page_routes(app: Application) -> None:
    """Serve the page's files; each is read once, when the receiver starts."""
    for path, (name, content_type) in PAGE_FILES.items():
        response = _static(name, content_type)

        def serve(request: Request, response: Response = response) -> Response:
            return response

        app.route("GET", path, serve)
