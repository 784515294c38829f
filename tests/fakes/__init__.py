"""In-memory stand-ins for the agent's outside dependencies, each held to the real one's behaviour by the suite
of the same name in tests/contract/."""
