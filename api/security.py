"""Browser security headers on every response, and the proxy headers believed only when a setting says a proxy is there."""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from styleq.shared.adapters.settings import Settings

# Scripts, styles and everything else only from this site's own files: no inline script or style
# attribute runs, so markup injected into a page stays inert. Pictures may also be the blob: URLs
# the dashboard makes of fetched previews and dropped files. No site may frame the pages.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # For browsers that predate frame-ancestors.
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Job ids are in the dashboard's URLs; no other site needs to learn them.
    "Referrer-Policy": "no-referrer",
}
# Sent only over HTTPS (a browser ignores it over HTTP anyway): a year, for this host only, since the
# service cannot know whether every subdomain of its host serves HTTPS.
STRICT_TRANSPORT_SECURITY = "max-age=31536000"


def init_app(app: Flask, settings: Settings) -> None:
    """Believe X-Forwarded-For/Proto/Host from `settings.trusted_proxies` proxies, and add the headers to every response."""
    if settings.trusted_proxies:
        # Each proxy appends to these headers; only the last `trusted_proxies` values are its own,
        # anything before them came from the client and is ignored.
        count = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)  # type: ignore[method-assign]  # middleware, as Flask documents
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    """Set the browser security headers on `response` (pages, JSON, files and errors alike)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY)
    return response
