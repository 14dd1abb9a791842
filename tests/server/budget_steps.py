"""Noisy steps through :func:`server.services.dp_step.charge_and_step` at the service
layer: a run and an ``optim_step`` operation in the database, and a real tiny DP
engine whose ``optim_step`` calls are recorded."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from server.db.models import OperationRow, Tenant, TrainingRunRow, utcnow
from server.db.session import Database
from server.services.budgets import BudgetService
from server.services.dp_step import charge_and_step
from tensafe.engine import OptimizerConfig, TrainingEngine
from tensafe.models import LoRAConfig, build_tiny_llama
from tensafe.privacy import DPConfig

SIGMA, Q = 1.0, 0.01


class RecordingEngine:
    """A real tiny DP-LoRA engine (σ = 1, q = 0.01, N = 1000, C = 1, δ = 1e-5) that
    records its ``optim_step`` calls: a refused step must never reach it."""

    def __init__(self, *, accountant: str = "prv") -> None:
        self.engine = TrainingEngine(
            model=build_tiny_llama(seed=0),
            lora_config=LoRAConfig(rank=2, alpha=4),
            dp_config=DPConfig(
                noise_multiplier=SIGMA,
                max_grad_norm=1.0,
                dataset_size=1000,
                sample_rate=Q,
                target_delta=1e-5,
                accountant=accountant,  # type: ignore[arg-type]
            ),
            optimizer=OptimizerConfig(name="sgd", learning_rate=0.1),
            seed=0,
        )
        self.calls: list[int] = []

    @property
    def dp(self) -> Any:
        return self.engine.dp

    @property
    def step(self) -> int:
        return self.engine.step

    def optim_step(self, adam_params: Any = None) -> Any:
        self.calls.append(1)
        return self.engine.optim_step(adam_params)


def ensure_run(database: Database, *, tenant_id: str, run_id: str) -> None:
    """The tenant and a READY DP run, if not there yet."""
    try:
        with database.transaction() as session:
            if session.get(Tenant, tenant_id) is None:
                session.add(Tenant(tenant_id=tenant_id, name=f"tenant {tenant_id}"))
    except IntegrityError:
        pass  # another writer's thread created it
    with database.transaction() as session:
        if session.get(TrainingRunRow, run_id) is None:
            session.add(
                TrainingRunRow(
                    run_id=run_id,
                    tenant_id=tenant_id,
                    status="READY",
                    config={},
                    model_ref="tiny-llama",
                    dp_enabled=True,
                    next_seq=1,
                )
            )


def optim_step_op(database: Database, *, tenant_id: str, run_id: str) -> OperationRow:
    """A running ``optim_step`` operation of the run (what the worker has claimed)."""
    ensure_run(database, tenant_id=tenant_id, run_id=run_id)
    with database.transaction() as session:
        run = session.scalars(
            select(TrainingRunRow).where(TrainingRunRow.run_id == run_id).with_for_update()
        ).one()
        op = OperationRow(
            future_id="fut_" + secrets.token_hex(12),
            run_id=run_id,
            tenant_id=tenant_id,
            seq=run.next_seq,
            operation="optim_step",
            status="running",
            request={},
            created_at=utcnow(),
            started_at=utcnow(),
        )
        run.next_seq += 1
        run.status = "BUSY"
        session.add(op)
    return op


def step(
    service: BudgetService,
    engine: RecordingEngine,
    *,
    tenant_id: str,
    dataset_id: str,
    run_id: str,
) -> float:
    """One noisy step charged to the dataset; returns its ledger ``seq``."""
    op = optim_step_op(service.db, tenant_id=tenant_id, run_id=run_id)
    response = charge_and_step(
        service.db,
        service,
        op=op,
        engine=engine,  # type: ignore[arg-type]
        adam_params=None,
        dataset_id=dataset_id,
    )
    return response.metrics["dp/ledger_seq"]
