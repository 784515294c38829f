"""One test body per outside dependency, run against the real implementation (tests/integration/contract/) and
the in-memory one (tests/unit/): whatever the fake lets pass, the real one does too."""
