"""Infrastructure, not analysis: downloads that retry on network errors, and never on a
clear answer.

A dropped connection, a timeout or a server error (HTTP 5xx, 429) may pass; a missing
package, repository or revision, a refused token or a checksum mismatch will not, so those
fail at once with the message that says why.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("tokprob")

T = TypeVar("T")

NETWORK_ERRORS = frozenset({
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutException",
    "ConnectError", "ReadError", "RemoteProtocolError", "TransportError",
    "ChunkedEncodingError", "ProtocolError", "IncompleteRead",
})
"""Exception class names of requests, httpx and urllib3 that mean the network failed."""

PIP_NETWORK_SIGNS = re.compile(
    r"Connection(Error| refused| reset| aborted)|timed out|Temporary failure in name "
    r"resolution|Name or service not known|Max retries exceeded|NewConnectionError|"
    r"HTTP error (429|5\d\d)|\b(502|503|504) (Server Error|Bad Gateway|Service Unavailable)",
    re.IGNORECASE)
"""What pip writes when the network, not the request, failed."""


def with_retries(action: Callable[[], T], transient: Callable[[BaseException], bool],
                 what: str, attempts: int = 3, first_wait: float = 1.0,
                 sleep: Callable[[float], None] | None = None) -> T:
    """`action()`, tried again after 1, 2, 4 … s while it fails with a transient error."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:
            if attempt == attempts or not transient(error):
                raise
            wait = first_wait * 2 ** (attempt - 1)
            log.warning("%s failed on the network (%s); trying again in %.0f s (%d of %d)",
                        what, type(error).__name__, wait, attempt + 1, attempts)
            (sleep or time.sleep)(wait)
    raise AssertionError("unreachable")


def network_error(error: BaseException) -> bool:
    """Whether an exception, or one it was raised from, is a network failure or a server
    error worth another try."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if any(cls.__name__ in NETWORK_ERRORS for cls in type(current).__mro__):
            return True
        status = getattr(getattr(current, "response", None), "status_code", None)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        current = current.__cause__ or current.__context__
    return False


class TransientDownloadError(Exception):
    """A download that failed on the network; its message is the tool's own words."""


def pip_failed_on_network(stderr: str) -> bool:
    return bool(PIP_NETWORK_SIGNS.search(stderr))
