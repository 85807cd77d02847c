"""Models of the cloudconfig domain."""
