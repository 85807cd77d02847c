"""Models of the cloudconfig domain."""
from .discovery_models import DiscoveryMember, DiscoveryToken  # noqa: E402,F401  (etcd discovery, issue 6 §6)
