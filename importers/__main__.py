"""``python -m importers``: the importer worker."""

import sys

from importers.main import main

sys.exit(main())
