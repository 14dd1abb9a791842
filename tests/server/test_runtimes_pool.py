"""The worker's LoRA runs share one base model in memory; full fine-tuning loads its own."""

from __future__ import annotations

import gc

from server.context import build_context
from server.db.models import TrainingRunRow

from .harness import run_config


def _frozen(engine) -> dict[str, int]:
    return {n: p.data_ptr() for n, p in engine.model.named_parameters() if not p.requires_grad}


def test_lora_runs_share_the_workers_base_and_full_runs_do_not(make_settings) -> None:
    context = build_context(make_settings())
    try:
        engines = context.executor.engines
        a = engines.build(TrainingRunRow(run_id="a", config=run_config(seed=1))).engine
        b = engines.build(TrainingRunRow(run_id="b", config=run_config(seed=2))).engine
        full = engines.build(TrainingRunRow(run_id="f", config=run_config(lora_config=None))).engine
        assert _frozen(a) == _frozen(b) and _frozen(a)
        assert not {p.data_ptr() for p in a.params} & {p.data_ptr() for p in b.params}
        assert engines.backend.base_models.loaded_bases() == ["tiny-llama"]
        embed = a.model.get_base_model().model.embed_tokens.weight
        assert full.model.model.embed_tokens.weight.data_ptr() != embed.data_ptr()
        assert full.model.model.embed_tokens.weight.requires_grad
        del a, b, embed
        gc.collect()
        assert engines.backend.base_models.loaded_bases() == []  # freed with its last run
    finally:
        context.db.dispose()
