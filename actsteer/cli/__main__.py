"""``python -m actsteer.cli``: the ``actsteer`` command, for environments without its script."""

import sys

from . import main

sys.exit(main())
