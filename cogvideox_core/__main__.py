"""``python -m cogvideox_core``: see :mod:`cogvideox_core.cli`."""
from cogvideox_core.cli import main

raise SystemExit(main())
