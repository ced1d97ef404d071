"""`python -m tokprob …` is the `tokprob` command."""

from cli.main import main

raise SystemExit(main())
