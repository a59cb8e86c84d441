"""``python -m podcache.sidecar``: the same as the ``podcache-sidecar`` command."""

import sys

from podcache.sidecar.launcher import main

sys.exit(main())
