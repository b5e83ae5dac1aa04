"""``python -m qcompiler.cli`` is the ``qcompiler`` command."""

from qcompiler.cli import main

raise SystemExit(main())
