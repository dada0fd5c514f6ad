"""Instance-level routers. Importing this package registers every built-in router by name."""

from llmsched.policies.instance import round_robin  # noqa: F401
from llmsched.policies.instance.base import ROUTERS, Router

__all__ = ["ROUTERS", "Router"]
