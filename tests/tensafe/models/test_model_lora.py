"""LoRAConfig validation, Tinker switches, target resolution, apply_lora."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from peft import TaskType

from tensafe.errors import ConfigError
from tensafe.models import LoadedModel, LoRAConfig, apply_lora, model_info
from tensafe.models.lora import ATTN_MODULES, MLP_MODULES

H, KV, FF, LAYERS, VOCAB = 64, 32, 128, 2, 49152  # tiny-llama: k/v project to 2 heads x 16


def lora_params(rank: int, *, attn: bool = True, mlp: bool = True, unembed: bool = False) -> int:
    """r * (in + out) per adapted Linear of the tiny Llama."""
    per_layer = 0
    if attn:
        per_layer += rank * ((H + H) + 2 * (H + KV) + (H + H))
    if mlp:
        per_layer += rank * (2 * (H + FF) + (FF + H))
    return LAYERS * per_layer + (rank * (H + VOCAB) if unembed else 0)


def test_analytic_count_known_answers() -> None:
    assert lora_params(16) == 2 * 16 * (128 + 96 + 96 + 128 + 192 + 192 + 192) == 32768
    assert lora_params(8, attn=False, unembed=True) == 2 * 8 * 576 + 8 * (64 + 49152) == 402944


def test_defaults_follow_tinker() -> None:
    config = LoRAConfig()
    assert (config.rank, config.alpha, config.dropout, config.bias) == (16, 32, 0.0, "none")
    assert config.selected_modules == ATTN_MODULES + MLP_MODULES


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ({"train_mlp": False}, ATTN_MODULES),
        ({"train_attn": False}, MLP_MODULES),
        ({"train_attn": False, "train_mlp": False, "train_unembed": True}, ("lm_head",)),
        ({"train_unembed": True}, (*ATTN_MODULES, *MLP_MODULES, "lm_head")),
    ],
)
def test_switches_map_to_modules(switches: dict[str, bool], expected: tuple[str, ...]) -> None:
    assert LoRAConfig(**switches).selected_modules == expected


def test_explicit_targets_override_switches() -> None:
    config = LoRAConfig(target_modules=["v_proj", "q_proj"], train_attn=False, train_mlp=False)
    assert config.target_modules == ("v_proj", "q_proj")  # list stored as a tuple
    assert config.selected_modules == ("v_proj", "q_proj")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rank = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({"rank": 0}, "rank", "> 0"),
        ({"rank": 2.0}, "rank", "integer"),
        ({"rank": True}, "rank", "integer"),
        ({"alpha": 0}, "alpha", "> 0"),
        ({"alpha": math.nan}, "alpha", "> 0"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"dropout": -0.1}, "dropout", "[0, 1)"),
        ({"bias": "some"}, "bias", "'none', 'all', 'lora_only'"),
        ({"train_attn": "yes"}, "train_attn", "True or False"),
        ({"target_modules": "q_proj"}, "target_modules", "tuple"),
        ({"target_modules": ("q_proj", "")}, "target_modules", "non-empty"),
        ({"target_modules": ()}, "target_modules", "no module selected"),
        ({"train_attn": False, "train_mlp": False}, "target_modules", "train_unembed"),
    ],
)
def test_validation_names_field_and_allowed_values(
    kwargs: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        LoRAConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)


def test_resolve_lists_missing_and_available(tiny_llama: Callable[..., LoadedModel]) -> None:
    model = tiny_llama().model
    assert LoRAConfig().resolve_target_modules(model) == ATTN_MODULES + MLP_MODULES
    assert LoRAConfig(target_modules=("model.layers.0.self_attn.q_proj",)).resolve_target_modules(
        model
    ) == ("model.layers.0.self_attn.q_proj",)
    with pytest.raises(ConfigError) as info:
        LoRAConfig(target_modules=("q_proj", "c_attn", "wqkv")).resolve_target_modules(model)
    message = str(info.value)
    assert info.value.field == "target_modules"
    assert "c_attn, wqkv" in message and "q_proj," not in message.split("available")[0]
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message


def test_to_peft() -> None:
    peft_config = LoRAConfig(rank=4, alpha=8, dropout=0.1, bias="lora_only").to_peft()
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (4, 8, 0.1)
    assert peft_config.bias == "lora_only"
    assert peft_config.task_type == TaskType.CAUSAL_LM
    assert set(peft_config.target_modules) == set(ATTN_MODULES + MLP_MODULES)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"rank": 4, "train_mlp": False}, {"rank": 8, "train_attn": False, "train_unembed": True}],
)
def test_trainable_params_match_analytic_count(
    tiny_llama: Callable[..., LoadedModel], kwargs: dict[str, object]
) -> None:
    config = LoRAConfig(**kwargs)  # type: ignore[arg-type]
    base = tiny_llama().model
    total_before = sum(p.numel() for p in base.parameters())
    peft_model = apply_lora(base, config)
    expected = lora_params(
        config.rank, attn=config.train_attn, mlp=config.train_mlp, unembed=config.train_unembed
    )
    info = model_info(peft_model)
    assert info.trainable_params == expected
    assert info.total_params == total_before + expected
    assert (info.is_lora, info.lora_rank) == (True, config.rank)
    for name, param in peft_model.named_parameters():
        assert param.requires_grad == ("lora_" in name), name


def test_unembed_on_tied_model_keeps_base_frozen_and_tied(
    tiny_llama: Callable[..., LoadedModel],
) -> None:
    tiny = tiny_llama()
    peft_model = apply_lora(tiny.model, LoRAConfig(rank=4, train_unembed=True))
    inner = peft_model.get_base_model()
    embed = inner.model.embed_tokens.weight
    assert inner.lm_head.base_layer.weight is embed  # still one shared tensor
    assert not embed.requires_grad
    assert model_info(peft_model).tied_embeddings
    before = embed.detach().clone()
    lora_b = inner.lm_head.lora_B["default"].weight
    assert torch.count_nonzero(lora_b) == 0  # peft starts B at zero

    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    batch = tiny.tokenizer(["Hello, world! Hello again."], return_tensors="pt")
    peft_model.train()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()

    assert torch.equal(embed, before)  # input embeddings untouched
    assert torch.count_nonzero(lora_b) > 0  # the separate adapter trained


def test_apply_lora_rejects_missing_targets(tiny_llama: Callable[..., LoadedModel]) -> None:
    with pytest.raises(ConfigError, match="c_attn"):
        apply_lora(tiny_llama().model, LoRAConfig(target_modules=("c_attn",)))
