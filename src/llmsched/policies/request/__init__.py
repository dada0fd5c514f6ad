"""Request-level policies. Importing this package registers every built-in policy by name."""

from llmsched.policies.request import ewsjf, fcfs, gimbal, priority, sjf, sjf_aging  # noqa: F401
from llmsched.policies.request.base import REQUEST_POLICIES, RequestPolicy

__all__ = ["REQUEST_POLICIES", "RequestPolicy"]
