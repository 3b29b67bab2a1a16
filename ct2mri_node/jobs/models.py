"""The named models of a worker: each loaded once, on first use, and shared by the jobs that use it.

Memory policy: at most ``worker.max_loaded_models`` models are held at once; loading one more
drops the least recently used one first (its weights and, on a GPU, its cached memory are
released before the new model is loaded, so peak memory is that of ``max_loaded_models``
models, never one more). A model in use by a running job is never dropped: a worker runs one
job at a time, and the pool is only asked for a model between jobs.

The pool never imports the model package: ``load`` (``node.load_translator``) does.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: The name of the model a config with a single ``model:`` section defines.
DEFAULT_MODEL = "default"


class ModelPool:
    """Translators by model name, loaded lazily, least recently used dropped beyond ``capacity``."""

    def __init__(
        self, names: Iterable[str], load: Callable[[str], Any], capacity: int = 2, *, fixed: Any = None
    ) -> None:
        self._fixed = fixed   # one translator answering every name (see :meth:`single`)
        self._names = tuple(names)
        if not self._names:
            raise ConfigError("no model is configured; add a model: or models: section")
        self._load = load
        self._capacity = max(1, int(capacity))
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def single(cls, translator: Any) -> ModelPool:
        """A pool that answers every name with one already-loaded translator (tests, the
        offline ``translate`` command)."""
        return cls([DEFAULT_MODEL], lambda name: translator, capacity=1, fixed=translator)

    @property
    def names(self) -> tuple[str, ...]:
        """The configured model names."""
        return self._names

    def loaded(self) -> list[str]:
        """The names of the models held now, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def get(self, name: str | None) -> Any:
        """The translator of model ``name`` (None: the only model), loading it if needed."""
        if self._fixed is not None:
            return self._fixed
        if name is None:
            if len(self._names) != 1:
                raise ConfigError(f"this job names no model and several are configured ({', '.join(self._names)})")
            name = self._names[0]
        if name not in self._names:
            raise ConfigError(f"no model named {name!r} is configured (known: {', '.join(self._names)}); "
                              "the configuration changed since the job was routed: `ct2mri-node retry` it")
        with self._lock:   # one load at a time: two jobs never load the same model twice
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            while len(self._loaded) >= self._capacity:
                evicted, translator = self._loaded.popitem(last=False)
                log.info("model %s unloaded (worker.max_loaded_models=%d)", evicted, self._capacity)
                close = getattr(translator, "close", None)
                if callable(close):
                    close()
                del translator
            log.info("loading model %s", name)
            translator = self._load(name)
            self._loaded[name] = translator
            return translator

    def first(self) -> Any:
        """Load the first configured model now (a node that translates is ready only once one works)."""
        return self.get(self._names[0])
