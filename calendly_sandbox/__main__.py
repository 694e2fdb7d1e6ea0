"""`python -m calendly_sandbox`: run the sandbox."""

from .app import main

raise SystemExit(main())
