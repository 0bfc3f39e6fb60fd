"""The lean processing runtime over confluent-kafka (docs/runtime.md says why not Faust here)."""

from passerelle.streams.runtime.config import RunnerConfig
from passerelle.streams.runtime.deadletter import DEAD_LETTER_PREFIX, ErrorBudget, ErrorBudgetExceeded, header_dict
from passerelle.streams.runtime.processor import Context, Processor, TableSpec, make_context
from passerelle.streams.runtime.records import InRecord, OutRecord
from passerelle.streams.runtime.runner import FatalRuntimeError, Runner
from passerelle.streams.runtime.state import KeyValueStore, StoreSpec
from passerelle.streams.runtime.timers import Timer, TimerService

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
