"""The engine emulator: vLLM's OpenAI-compatible API and metrics, driven in real time by the engine model.

See docs/emulator.md. `EmulatorServer` is the in-process API; `cli.emulate_cmd` is `llmsched emulate`.
"""

from llmsched.emulator.server import EmulatorServer, create_app

__all__ = ["EmulatorServer", "create_app"]
