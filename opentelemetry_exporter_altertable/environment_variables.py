"""The environment variables this package reads (registered under
``opentelemetry_environment_variables`` so OpenTelemetry tooling can list them)."""

OTEL_EXPORTER_ALTERTABLE_API_KEY = "OTEL_EXPORTER_ALTERTABLE_API_KEY"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_API_KEY

The Altertable ingestion key (``pk_live_...`` / ``pk_test_...``), sent as ``X-API-Key``.
"""

ALTERTABLE_API_KEY = "ALTERTABLE_API_KEY"
"""
.. envvar:: ALTERTABLE_API_KEY

Fallback for the key, the name the official Altertable SDKs use.
"""

OTEL_EXPORTER_ALTERTABLE_ENDPOINT = "OTEL_EXPORTER_ALTERTABLE_ENDPOINT"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_ENDPOINT

Base URL of the API. Default: ``https://api.altertable.ai``.
"""

OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT = "OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT

Altertable environment slug. Default: the resource's ``deployment.environment.name``, else
``production``.
"""

OTEL_EXPORTER_ALTERTABLE_TIMEOUT = "OTEL_EXPORTER_ALTERTABLE_TIMEOUT"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_TIMEOUT

Seconds one export may take, retries included. Default: 10.
"""

OTEL_EXPORTER_ALTERTABLE_MAX_BATCH_SIZE = "OTEL_EXPORTER_ALTERTABLE_MAX_BATCH_SIZE"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_MAX_BATCH_SIZE

Items per HTTP request. Default: 100.
"""

OTEL_EXPORTER_ALTERTABLE_SYNC = "OTEL_EXPORTER_ALTERTABLE_SYNC"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_SYNC

``true`` adds ``?sync=true``: the API answers once the data is written. Default: false.
"""

OTEL_EXPORTER_ALTERTABLE_COMPRESSION = "OTEL_EXPORTER_ALTERTABLE_COMPRESSION"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_COMPRESSION

``gzip`` or ``none``. Default: none.
"""

OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR = "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR

Directory where undelivered calls wait for the next export. Default: off.
"""

OTEL_EXPORTER_ALTERTABLE_SPOOL_MAX_BYTES = "OTEL_EXPORTER_ALTERTABLE_SPOOL_MAX_BYTES"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_SPOOL_MAX_BYTES

Size bound of the spool; the oldest files go first. Default: 67108864 (64 MiB).
"""

OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS = "OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS

``true`` turns untagged server spans that served an HTML page (GET, 2xx, captured response
``content-type`` starting with ``text/html``) into ``$pageview`` track calls. Default: false.
"""

OTEL_EXPORTER_ALTERTABLE_PROPERTIES_EXCLUDE = "OTEL_EXPORTER_ALTERTABLE_PROPERTIES_EXCLUDE"
"""
.. envvar:: OTEL_EXPORTER_ALTERTABLE_PROPERTIES_EXCLUDE

Comma-separated glob patterns of attribute names never copied into properties
(``analytics.properties.*`` is never excluded). Empty excludes nothing. Default:
``code.*,thread.*,network.*,net.*``.
"""
