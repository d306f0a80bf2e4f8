"""``python -m cogvideox_core``: see :mod:`cogvideox_core.cli.main`."""
from cogvideox_core.cli.main import main

raise SystemExit(main())
