"""Django under OpenTelemetry: the logged-in user on the server span, with a ``response_hook``.

Django's instrumentation middleware runs first, before ``AuthenticationMiddleware`` has set
``request.user``; its ``response_hook`` runs on the way out, after every middleware and the
view, so that is where identity goes. A hook needs ``DjangoInstrumentor().instrument(...)`` in
code, so this example instruments Django itself and asks ``opentelemetry-instrument`` (which
still sets up the SDK and the exporter from the environment) to leave Django alone::

    OTEL_SERVICE_NAME=shop-django OTEL_TRACES_EXPORTER=altertable \
    OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=django \
    OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS=true \
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE=content-type \
    opentelemetry-instrument python examples/django_app.py --port 8001

Then ``curl -c jar -b jar 127.0.0.1:8001/login/ada`` and
``curl -c jar -b jar -X POST 127.0.0.1:8001/checkout``.

A single-file project: settings, one in-memory user, three views. ``session.id`` is Django's
own session key (the ``sessionid`` cookie).
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="example-only-not-a-secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
    ],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    USE_TZ=True,
)


# --8<-- [start:identity]
def identify_user(span: Any, request: Any, response: Any) -> None:
    """``response_hook``: runs after the auth middleware, so ``request.user`` is known."""
    if not span.is_recording():
        return
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        span.set_attribute("user.id", str(user.pk))
        span.set_attribute("user.email", user.email)  # a trait: sends an identify
    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        span.set_attribute("session.id", session.session_key)


def _instrument() -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().instrument(response_hook=identify_user)
# --8<-- [end:identity]


_instrument()  # before the WSGI handler loads the middleware list
django.setup()

from django.contrib.auth import login  # noqa: E402 (needs settings)
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from opentelemetry import trace  # noqa: E402


def pricing(request: HttpRequest) -> HttpResponse:
    # An HTML GET page: a $pageview with OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS=true.
    return HttpResponse("<!doctype html><title>Pricing</title><h1>Pricing</h1>")


def login_view(request: HttpRequest, username: str) -> HttpResponse:
    user = User.objects.filter(username=username).first()
    if user is None:
        return HttpResponse("no such user", status=404)
    login(request, user)
    trace.get_current_span().set_attribute("analytics.event", "Logged In")
    return HttpResponse("ok")


@csrf_exempt
def checkout(request: HttpRequest) -> JsonResponse:
    span = trace.get_current_span()
    span.set_attribute("analytics.event", "Checkout Completed")
    span.set_attribute("analytics.properties.cart_value", 59.9)
    return JsonResponse({"ok": True})


urlpatterns = [
    path("pricing", pricing),
    path("login/<str:username>", login_view),
    path("checkout", checkout),
]


def behind_proxy(app: Any, trusted: frozenset[str] = frozenset({"127.0.0.1"})) -> Any:
    """WSGI middleware: the client address from ``X-Forwarded-For`` when a trusted reverse
    proxy sent the request, so the instrumentation reports the user's address (``$ip``), not
    the proxy's. Only behind a proxy you run: anyone can send that header."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded and environ.get("REMOTE_ADDR") in trusted:
            environ["REMOTE_ADDR"] = forwarded.split(",")[-1].strip()
        return app(environ, start_response)

    return wrapped


def main() -> None:
    from _serve import port_argument, serve_wsgi

    call_command("migrate", verbosity=0, run_syncdb=True)
    User.objects.create_user("ada", email="ada@example.com", password=None)
    serve_wsgi(behind_proxy(get_wsgi_application()), port_argument(8001))


if __name__ == "__main__":
    main()
