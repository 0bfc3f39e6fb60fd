"""The lean processing runtime over confluent-kafka (docs/runtime.md says why not Faust here)."""

from streams.runtime.config import RunnerConfig
from streams.runtime.deadletter import DEAD_LETTER_PREFIX, ErrorBudget, ErrorBudgetExceeded, header_dict
from streams.runtime.processor import Context, Processor, TableSpec, make_context
from streams.runtime.records import InRecord, OutRecord
from streams.runtime.runner import FatalRuntimeError, Runner
from streams.runtime.state import KeyValueStore, StoreSpec
from streams.runtime.timers import Timer, TimerService

__all__ = [
    "DEAD_LETTER_PREFIX",
    "Context",
    "ErrorBudget",
    "ErrorBudgetExceeded",
    "FatalRuntimeError",
    "InRecord",
    "KeyValueStore",
    "OutRecord",
    "Processor",
    "Runner",
    "RunnerConfig",
    "StoreSpec",
    "TableSpec",
    "Timer",
    "TimerService",
    "header_dict",
    "make_context",
]
