"""`python -m node` is `ichtriage`."""

from node.cli.main import main

raise SystemExit(main())
