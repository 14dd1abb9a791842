"""The operations of a run on a server-held dataset: ``draw_batch``, and
``forward_backward`` on a drawn batch (the rules are in
:mod:`server.services.drawn_batches`).

The drawn batch is committed on the run row (``pending_draw``) with the completed
``draw_batch``, so a restart or a discarded engine cannot give the client a redraw;
which privacy units a ``forward_backward`` used lives with the engine's accumulator
(:class:`~server.worker.runtimes.RunRuntime`), and is forgotten with it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session
from tg_tinker.types import DatasetRecord, DrawBatchRequest, DrawnBatch, ForwardBackwardRequest

from server.db.models import TrainingRunRow
from server.db.session import Database
from server.errors import ConflictError, EngineAheadError, ValidationError
from server.services import drawn_batches
from server.services.dataset_reader import DatasetReader
from server.services.drawn_batches import PendingDraw
from server.services.wire import engine_batch
from server.storage import ArtifactStore
from server.worker.runtimes import RunRuntime
from tensafe.artifacts import TenantKeyring
from tensafe.engine import ForwardBackwardResult
from tensafe.losses import get_loss_function

Effects = Callable[[Session, TrainingRunRow], None]


def pending_draw(run: TrainingRunRow) -> PendingDraw | None:
    return None if run.pending_draw is None else PendingDraw.from_json(run.pending_draw)


def reader(
    runtime: RunRuntime, run: TrainingRunRow, *, db: Database, store: ArtifactStore,
    keyring: TenantKeyring,
) -> DatasetReader:  # fmt: skip
    """The run's dataset (opened once per engine)."""
    if runtime.dataset is None:
        assert runtime.spec.dataset_id is not None
        runtime.dataset = DatasetReader(
            db, store, keyring, tenant_id=run.tenant_id, dataset_id=runtime.spec.dataset_id
        )
    return runtime.dataset


def draw_batch(
    runtime: RunRuntime, run: TrainingRunRow, request: DrawBatchRequest, dataset: DatasetReader
) -> tuple[DrawnBatch, Effects]:
    """Draw the run's next logical batch; the effects commit it as the run's pending draw.

    Raises:
        ConflictError: (``run_id``) a drawn batch has not been stepped yet.
    """
    if run.pending_draw is not None:
        raise ConflictError(
            "the batch drawn before has not been consumed by an optim_step yet; every "
            "drawn batch is stepped (an empty or unused one too) before the next draw",
            field="run_id",
        )
    dp = runtime.engine.dp
    assert dp is not None
    drawn = drawn_batches.draw(
        dataset, rate=dp.config.sample_rate, max_records_per_unit=runtime.spec.max_records_per_unit
    )
    runtime.used_groups.clear()
    units = list(drawn.groups) if dataset.dataset.privacy_unit == "unit" else None
    records = None
    if request.include_records:
        records = [
            DatasetRecord(tokens=r.tokens.tolist(),
                          fields={k: v.tolist() for k, v in r.fields.items()})
            for r in dataset.records(drawn.records)
        ]  # fmt: skip
    result = DrawnBatch(
        batch_id=drawn.batch_id,
        size=len(drawn.records),
        record_ids=list(drawn.records),
        units=units,
        records=records,
    )

    def effects(session: Session, row: TrainingRunRow) -> None:
        row.pending_draw = drawn.to_json()

    return result, effects


def drawn_forward_backward(
    runtime: RunRuntime,
    run: TrainingRunRow,
    request: ForwardBackwardRequest,
    dataset: DatasetReader,
    *,
    max_batch: int,
    max_tokens: int | None = None,
) -> ForwardBackwardResult:
    """``forward_backward`` of a run on a server-held dataset: the drawn records
    themselves (``drawn_batch_id``) or client-built datums naming drawn records
    (``data[i].record_id``); each privacy unit clipped as one contribution. The batch
    is computed in engine calls of at most ``max_batch`` datums and ``max_tokens``
    tokens, each privacy unit whole in one call.

    Raises:
        ConflictError: no drawn batch, another batch, or a unit used before.
        ValidationError: ``batch`` form (it cannot name records), a datum without a drawn
            record, or more datums than one engine call takes.
    """
    pending = drawn_batches.check_draw(pending_draw(run), request.drawn_batch_id)
    if request.batch is not None:
        raise ValidationError(
            "this run trains on a server-held dataset: send drawn_batch_id, or datums that "
            "name their record_id",
            field="batch",
        )
    if request.drawn_batch_id is not None:
        if runtime.used_groups:
            raise ConflictError(
                f"batch {pending.batch_id} was already used by a forward_backward",
                field="drawn_batch_id",
            )
        datums, groups = drawn_batches.drawn_datums(dataset, pending)
    else:
        assert request.data is not None
        groups = drawn_batches.client_datums(
            [d.record_id for d in request.data], pending, used_groups=runtime.used_groups
        )
        datums = engine_batch(request)  # type: ignore[assignment]
    if not datums:  # an empty draw: nothing to compute, the step still adds noise
        return ForwardBackwardResult(
            loss=0.0,
            grad_norm=0.0,
            tokens_processed=0,
            loss_fn_output_type=request.loss_fn,
            loss_fn_outputs=[],
            metrics={"loss:mean": 0.0, "loss:sum": 0.0, "num_examples:sum": 0.0},
        )
    # the server built this batch: it is split to fit (datums and tokens), never refused
    calls = drawn_batches.split_by_group(datums, groups, max_batch=max_batch, max_tokens=max_tokens)
    fn = get_loss_function(request.loss_fn)
    for part, _ in calls:  # bad records are refused before any gradient is accumulated
        runtime.engine.to_batch(
            part, required_inputs=fn.required_inputs, signed_weights=fn.signed_weights
        )
    results: list[ForwardBackwardResult] = []
    try:
        for part, part_groups in calls:
            grouped = len(set(part_groups)) < len(part_groups)  # a unit's datums together
            results.append(
                runtime.engine.forward_backward(
                    part,
                    loss_fn=request.loss_fn,
                    loss_fn_config=request.loss_fn_config,
                    **({"groups": part_groups} if grouped else {}),
                )
            )
    except BaseException as exc:
        if results:  # part of the batch is accumulated: the engine must be discarded
            raise EngineAheadError(
                f"forward_backward of {run.run_id} failed after {len(results)} of "
                f"{len(calls)} parts of the drawn batch"
            ) from exc
        raise
    runtime.used_groups |= drawn_batches.unique_groups(groups)
    return results[0] if len(results) == 1 else merge_results(results)


def merge_results(results: list[ForwardBackwardResult]) -> ForwardBackwardResult:
    """One result for a batch computed in parts: outputs in order, sums added, maxima
    kept, the loss re-averaged over the token weights (``loss:sum ÷ loss:mean`` of each
    part); the gradient norm of the whole is not known from the parts (``None``)."""
    loss_sum = sum(r.metrics.get("loss:sum", 0.0) for r in results)
    weight = sum(r.metrics["loss:sum"] / r.loss for r in results if r.loss)
    metrics: dict[str, float] = {}
    for r in results:
        for key, value in r.metrics.items():
            if key.endswith(":sum"):
                metrics[key] = metrics.get(key, 0.0) + value
            elif key.endswith(":max"):
                metrics[key] = max(metrics.get(key, value), value)
    examples = [r.metrics.get("num_examples:sum", 0.0) for r in results]
    for key in {k for r in results for k in r.metrics if not k.endswith((":sum", ":max"))}:
        pairs = [(r.metrics[key], n) for r, n in zip(results, examples, strict=True)
                 if key in r.metrics]  # fmt: skip
        total = sum(n for _, n in pairs)
        metrics[key] = sum(v * n for v, n in pairs) / total if total else 0.0
    loss = loss_sum / weight if weight else 0.0
    metrics["loss:mean"] = loss
    return ForwardBackwardResult(
        loss=loss,
        grad_norm=None,
        tokens_processed=sum(r.tokens_processed for r in results),
        loss_fn_output_type=results[0].loss_fn_output_type,
        loss_fn_outputs=[o for r in results for o in r.loss_fn_outputs],
        metrics=metrics,
    )


__all__ = ["draw_batch", "drawn_forward_backward", "merge_results", "pending_draw", "reader"]
