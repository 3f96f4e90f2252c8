"""``python -m pnp_service.cli``: the ``pnp-service`` command."""

import sys

from . import main

sys.exit(main())
