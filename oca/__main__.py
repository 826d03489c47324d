"""``python -m oca`` is the ``oca`` command."""

from __future__ import annotations

import sys

from oca.cli import main

sys.exit(main())
