"""A local, Altertable-compatible ingestion API backed by DuckDB.

``POST /track``, ``/identify`` and ``/alias`` behave as the API does (auth, validation, error
codes, single or array bodies, ``sync``); rows land in ``altertable.analytics.events`` and
``altertable.analytics.identities`` so the tracking guide's SQL runs verbatim. DuckDB is an
optional dependency (``pip install 'opentelemetry-exporter-altertable[local]'``), imported
only when a receiver starts. A :class:`FaultPlan` makes it misbehave on purpose (503s,
dropped connections, outages) for reliability tests.
"""

from __future__ import annotations

from ._faults import FaultInjector, FaultPlan
from ._local import DEFAULT_ENVIRONMENTS, LocalReceiver
from ._measure import measure_ingest
from ._validation import BUILT_IN_PROPERTIES

__all__ = [
    "BUILT_IN_PROPERTIES",
    "DEFAULT_ENVIRONMENTS",
    "FaultInjector",
    "FaultPlan",
    "LocalReceiver",
    "measure_ingest",
]
