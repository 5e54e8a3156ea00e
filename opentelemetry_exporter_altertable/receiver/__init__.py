"""A local, Altertable-compatible ingestion API backed by DuckDB.

``POST /track``, ``/identify`` and ``/alias`` behave as the API does (auth, validation, error
codes, single or array bodies, ``sync``); rows land in ``altertable.analytics.events`` and
``altertable.analytics.identities`` so the tracking guide's SQL runs verbatim. DuckDB is an
optional dependency (``pip install 'opentelemetry-exporter-altertable[local]'``), imported
only when a receiver starts. A :class:`FaultPlan` makes it misbehave on purpose (503s,
dropped connections, outages) for reliability tests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._faults import FaultInjector, FaultPlan
    from ._local import DEFAULT_ENVIRONMENTS, LocalReceiver
    from ._measure import measure_ingest
    from ._validation import BUILT_IN_PROPERTIES

#: Where each public name lives. Imported on first use, so the command line, which registers
#: ``serve`` and ``query`` from :mod:`._cli` for every command, does not load the receiver's
#: server, store and query engine for ``check`` or ``replay``.
_HOMES = {
    "BUILT_IN_PROPERTIES": "_validation",
    "DEFAULT_ENVIRONMENTS": "_local",
    "FaultInjector": "_faults",
    "FaultPlan": "_faults",
    "LocalReceiver": "_local",
    "measure_ingest": "_measure",
}
__all__ = [
    "BUILT_IN_PROPERTIES",
    "DEFAULT_ENVIRONMENTS",
    "FaultInjector",
    "FaultPlan",
    "LocalReceiver",
    "measure_ingest",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
