"""OpenTelemetry exporters that turn tagged spans, span events and log records into Altertable
product analytics (``track``, ``identify`` and ``alias`` calls), with no collector in between.

Tag a record with ``analytics.event`` and it becomes a ``track`` call; ``docs/mapping.md`` has
the whole attribute mapping.
"""

from ._retry import RetryPolicy
from .exporters import AltertableLogExporter, AltertableSpanExporter
from .helpers import alias, identify, track
from .processor import AltertableLogRecordProcessor, AltertableSpanProcessor
from .sampling import AltertableSampler
from .version import __version__

__all__ = [
    "AltertableLogExporter",
    "AltertableLogRecordProcessor",
    "AltertableSampler",
    "AltertableSpanExporter",
    "AltertableSpanProcessor",
    "RetryPolicy",
    "__version__",
    "alias",
    "identify",
    "track",
]
