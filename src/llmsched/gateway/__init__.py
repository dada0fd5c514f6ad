"""The OpenAI-compatible gateway (`llmsched serve`): the project's policies on live traffic. See docs/gateway.md.

`Gateway` (asyncio shell, aiohttp both sides) drives the sans-I/O `Dispatcher` (admission, routing, retries,
membership, health) with the same `RequestPolicy` and `Router` objects as the simulator.
"""

from llmsched.gateway.config import ConfigError, GatewayConfig, load_config
from llmsched.gateway.dispatcher import Dispatcher
from llmsched.gateway.server import Gateway

__all__ = ["ConfigError", "Dispatcher", "Gateway", "GatewayConfig", "load_config"]
