"""Models of the reboots domain."""
