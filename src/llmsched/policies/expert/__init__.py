"""Expert-level placers (see docs/experts.md); importing this package registers them in EXPERT_PLACERS."""

from llmsched.policies.expert import affinity, eplb, hotspot, static  # noqa: F401 - registration
from llmsched.policies.expert.base import EXPERT_PLACERS, ExpertPlacer, Placement, Topology, balancedness

__all__ = ["EXPERT_PLACERS", "ExpertPlacer", "Placement", "Topology", "balancedness"]
