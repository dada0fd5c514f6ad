"""llmsched: multi-layer scheduling for LLM serving.

Request-level queues, instance-level routers and expert-level placers share one sans-I/O core that is driven
either by the discrete-event simulator (`llmsched.sim`) or by the asyncio gateway (`llmsched.gateway`).
"""

__version__ = "0.1.0"
