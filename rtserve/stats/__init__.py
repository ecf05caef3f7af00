"""Stats of a running app: the admin interface (`enable_admin`, or `admin:` in rtserve.yaml)
serves its counters, connections and channels as JSON, and Prometheus metrics."""

from rtserve.stats.admin import AdminServer, enable_admin
from rtserve.stats.metrics import LoopLag

__all__ = ["AdminServer", "LoopLag", "enable_admin"]
