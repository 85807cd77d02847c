"""Models of the builds domain."""
