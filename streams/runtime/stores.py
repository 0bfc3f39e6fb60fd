"""Where each store of a processor lives: in memory (the default) or in RocksDB on local disk.

``StateConfig`` is the process's choice (``PASSERELLE_STATE_STORE``,
``PASSERELLE_STATE_DIR``); a ``StoreSpec`` can name its own ``backend``. The
in-memory dict stays for tests and small deployments: it restores its whole
changelog at every start. A store on disk keeps a checkpoint and restores
only the changelog's tail on the same disk (``rocks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passerelle.streams.runtime.state import KeyValueStore, StoreSpec

BACKENDS = ("memory", "rocksdb")


@dataclass(frozen=True)
class StateConfig:
    """``backend``: ``memory`` or ``rocksdb`` for every store that does not name its own.

    ``backend`` may also list stores: ``memory,visitors=rocksdb`` (the first
    word the default). ``directory`` holds the databases, one per store and
    partition under ``<app_id>/<instance_id>/``: keep it across restarts of the
    same instance, or every start restores from an empty disk.
    """

    backend: str = "memory"
    directory: Path = Path("state")
    block_cache_mb: int = 256
    _cache: list[Any] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in self._per_store().values():
            if kind not in BACKENDS:
                raise ValueError(f"state store '{kind}' is not one of {', '.join(BACKENDS)} ({self.backend!r})")

    def _per_store(self) -> dict[str, str]:
        """'' -> the default backend, then store name -> backend."""
        choice: dict[str, str] = {"": "memory"}
        for i, part in enumerate(p.strip() for p in self.backend.split(",") if p.strip()):
            name, _, kind = part.rpartition("=")
            if not name and i > 0:
                raise ValueError(f"state store setting {self.backend!r}: only the first entry may omit 'store='")
            choice[name.strip()] = kind.strip()
        return choice

    def backend_of(self, spec: StoreSpec[Any]) -> str:
        choice = self._per_store()
        return spec.backend or choice.get(spec.name, choice[""])

    def opener(self, app_id: str, instance_id: str) -> Any:
        """``make_context``'s ``open_store`` for one runner."""
        root = self.directory / app_id / instance_id

        def open_store(spec: StoreSpec[Any], partition: int) -> KeyValueStore[Any]:
            if self.backend_of(spec) == "memory":
                return KeyValueStore(spec, partition)
            try:
                from passerelle.streams.runtime.rocks import RocksStore
            except ImportError as exc:  # the optional extra
                raise RuntimeError(
                    f"store '{spec.name}' is configured for rocksdb but {exc.name} is not installed: "
                    "pip install 'passerelle[rocksdb]'"
                ) from None
            return RocksStore(spec, partition, root / spec.name / str(partition), self._block_cache())

        return open_store

    def _block_cache(self) -> Any:
        """One LRU block cache for every database of the process (created on first use)."""
        if not self._cache:
            from rocksdict import Cache

            self._cache.append(Cache(self.block_cache_mb * 1024 * 1024))
        return self._cache[0]
