"""Per-process state of an ingress replica, reachable from the ASGI middleware.

``@serve.ingress`` serializes the FastAPI app by value, so module globals captured by the app's
middleware are copies; an imported module is shared, so the replica registers itself here.
"""

from __future__ import annotations

from typing import Any, Optional

ingress: Optional[Any] = None
