"""`python -m tokprob …` is the `tokprob` command."""

from flows.cli import main

raise SystemExit(main())
