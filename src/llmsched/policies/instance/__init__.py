"""Instance-level routers. Importing this package registers every built-in router by name."""

from llmsched.policies.instance import (  # noqa: F401
    dynamo_cost,
    gimbal,
    least_kv,
    least_requests,
    linear,
    llmd_weighted,
    lmetric,
    lora_affinity,
    power_of_two,
    prefix,
    random_router,
    round_robin,
    session,
    sglang_cache_aware,
)
from llmsched.policies.instance.base import ROUTERS, Router
from llmsched.policies.instance.prefix_index import PrefixIndex

__all__ = ["ROUTERS", "PrefixIndex", "Router"]
