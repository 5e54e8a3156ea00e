"""``python -m opentelemetry_exporter_altertable``: the ``altertable-otel`` command."""

import sys

from .cli import main

sys.exit(main())
