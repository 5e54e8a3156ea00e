"""Flask + flask-login under ``opentelemetry-instrument``: who the user is, on the server span.

The Flask instrumentation opens the request's SERVER span; ``before_request`` runs inside it,
after flask-login has loaded the user, so that is where identity goes::

    OTEL_SERVICE_NAME=shop-flask OTEL_TRACES_EXPORTER=altertable \
    OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS=true \
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=referer \
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE=content-type \
    opentelemetry-instrument python examples/flask_app.py --port 5000

Then ``curl -c jar -b jar 127.0.0.1:5000/login/u-42`` and
``curl -c jar -b jar -X POST 127.0.0.1:5000/checkout``.

- ``user.id`` (and traits such as ``user.email``) from ``flask_login.current_user``;
- ``session.id`` from the app's own ``sid`` cookie, set on the first visit;
- ``ProxyFix`` so that behind one reverse proxy ``X-Forwarded-For`` becomes the client
  address the instrumentation reports (``$ip``); without a proxy leave it out: anyone can send
  that header.
"""

from __future__ import annotations

import uuid

from _serve import port_argument, serve_wsgi
from flask import Flask, Response, g, request
from flask_login import LoginManager, UserMixin, current_user, login_user
from opentelemetry import trace
from werkzeug.middleware.proxy_fix import ProxyFix

SESSION_COOKIE = "sid"


class User(UserMixin):
    def __init__(self, user_id: str, email: str, name: str) -> None:
        self.id = user_id
        self.email = email
        self.name = name


USERS = {"u-42": User("u-42", "ada@example.com", "Ada Lovelace")}

app = Flask(__name__)
app.secret_key = "example-only-not-a-secret"
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
login_manager = LoginManager(app)


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return USERS.get(user_id)


# --8<-- [start:identity]
@app.before_request
def put_identity_on_the_server_span() -> None:
    span = trace.get_current_span()  # the instrumentation's SERVER span
    if current_user.is_authenticated:
        span.set_attribute("user.id", current_user.id)
        span.set_attribute("user.email", current_user.email)  # a trait: sends an identify
    sid = request.cookies.get(SESSION_COOKIE)
    if sid is None:
        sid = g.new_sid = uuid.uuid4().hex
    span.set_attribute("session.id", sid)
# --8<-- [end:identity]


@app.after_request
def set_session_cookie(response: Response) -> Response:
    new_sid = g.get("new_sid")
    if new_sid is not None:
        response.set_cookie(SESSION_COOKIE, new_sid, httponly=True, samesite="Lax")
    return response


@app.get("/pricing")
def pricing() -> str:
    # An HTML GET page: a $pageview with OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS=true.
    return "<!doctype html><title>Pricing</title><h1>Pricing</h1>"


@app.get("/login/<user_id>")
def login(user_id: str) -> tuple[str, int] | str:
    user = USERS.get(user_id)
    if user is None:
        return "no such user", 404
    login_user(user)
    trace.get_current_span().set_attributes(
        {"analytics.event": "Logged In", "user.id": user.id, "user.email": user.email}
    )
    return "ok"


@app.post("/checkout")
def checkout() -> dict[str, object]:
    span = trace.get_current_span()
    span.set_attribute("analytics.event", "Checkout Completed")
    span.set_attribute("analytics.properties.cart_value", 59.9)
    return {"ok": True}


if __name__ == "__main__":
    serve_wsgi(app, port_argument(5000))
