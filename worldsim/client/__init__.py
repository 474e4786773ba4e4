"""Python client library for the worldsim daemon (protocol v1, see bridge/PROTOCOL.md).

:class:`Client` blocks; :class:`AsyncClient` is its asyncio twin with the same methods. Neither imports torch.
"""

from ..serve.security import ClientCurve
from .aio import AsyncClient
from .core import DEFAULT_ENDPOINT, ClientError, ConnectionLost, Frame, ServerError
from .sync import Client

__all__ = ["AsyncClient", "Client", "ClientCurve", "ClientError", "ConnectionLost", "DEFAULT_ENDPOINT", "Frame",
           "ServerError"]
