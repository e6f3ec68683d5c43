"""circuitgate: one circuit breaker per Celery worker, shared by its pool, gating consumption."""

from . import probes
from .breaker import Admission, SharedCircuitBreaker
from .install import install
from .settings import InvalidSetting, Settings, load_settings
from .shared_state import BreakerSnapshot, SharedBreakerState, State
from .storage import SharedMemoryStorage
from .task_guard import DELIVERIES_HEADER

__all__ = (
    "DELIVERIES_HEADER",
    "Admission",
    "BreakerSnapshot",
    "InvalidSetting",
    "Settings",
    "SharedBreakerState",
    "SharedCircuitBreaker",
    "SharedMemoryStorage",
    "State",
    "install",
    "load_settings",
    "probes",
)
