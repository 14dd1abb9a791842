"""A run's engine that lives in a Ray actor, as the server sees it.

It answers the cheap facts (name, LoRA and DP config) from a copy taken when the
engine was built, forwards ``forward``/``forward_backward``/``optim_step``/``to_batch``
and anything else (:meth:`RemoteEngine.call`) to the actor, and has no ``model`` or
``state_dict``: plaintext weights never leave the actor (checkpoints are sealed there,
:func:`server.worker.engine_calls.seal_payload`). Ray is not imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from server.worker import engine_calls
from server.worker.engine_calls import AccountantSnapshot, EngineFacts

if TYPE_CHECKING:
    from tensafe.engine import EngineInfo
    from tensafe.models import LoRAConfig
    from tensafe.privacy import ResolvedDP

T = TypeVar("T")


class ActorCaller(Protocol):
    def invoke(self, run_id: str, fn: Callable[..., T], kwargs: dict[str, Any]) -> T: ...


class RemoteDP:
    """``engine.dp`` of a remote engine: the resolved config; the accountant on demand."""

    def __init__(self, engine: RemoteEngine, config: ResolvedDP) -> None:
        self._engine = engine
        self.config = config

    @property
    def accountant(self) -> AccountantSnapshot:
        return self._engine.call(engine_calls.accountant)


class RemoteEngine:
    """Stands for the :class:`~tensafe.engine.TrainingEngine` of ``run_id`` in an actor."""

    def __init__(self, *, run_id: str, facts: EngineFacts, caller: ActorCaller, actor: str) -> None:
        self.run_id = run_id
        self.actor = actor
        self._caller = caller
        self.name = facts.name
        self.arch = facts.arch
        self.vocab_size = facts.vocab_size
        self.lora_config: LoRAConfig | None = facts.lora_config
        self.dp = None if facts.dp_config is None else RemoteDP(self, facts.dp_config)
        self._tokenizer: object | None = None

    def __repr__(self) -> str:
        return f"RemoteEngine(run_id={self.run_id!r}, actor={self.actor!r})"

    def call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """``fn(engine, **kwargs)`` in the actor (``fn`` module-level; results picklable).

        Raises:
            WorkerLostError: the actor died (the run is evicted; retry).
            whatever ``fn`` raised, as itself.
        """
        return self._caller.invoke(self.run_id, fn, kwargs)

    def _method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.call(engine_calls.call_method, method=method, args=args, kwargs=kwargs)

    # the engine surface the server uses
    @property
    def step(self) -> int:
        return self.call(engine_calls.step)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self.call(engine_calls.tokenizer)
        return self._tokenizer

    def info(self) -> EngineInfo:
        return self.call(engine_calls.info)

    def epsilon(self, delta: float | None = None) -> float:
        return float(self._method("epsilon", delta))

    def to_batch(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("to_batch", *args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("forward", *args, **kwargs)

    def forward_backward(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("forward_backward", *args, **kwargs)

    def optim_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("optim_step", *args, **kwargs)


__all__ = ["RemoteDP", "RemoteEngine"]
