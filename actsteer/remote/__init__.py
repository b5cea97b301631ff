"""Generation on an actsteer-enabled vLLM server (``actsteer serve``), behind the same ``Engine``
interface as the in-process model: ``engine`` (``RemoteEngine``, its HTTP calls), ``replies``
(server replies as ``Generation`` values) and ``steering`` (steering as a request carries it)."""

from .engine import MAX_IN_FLIGHT, RemoteEngine, remote_engine
from .steering import RemoteSteering, merged

__all__ = ["MAX_IN_FLIGHT", "RemoteEngine", "RemoteSteering", "merged", "remote_engine"]
