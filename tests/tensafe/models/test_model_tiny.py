"""The tiny random-init Llama: shape, determinism, naming."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tensafe.errors import ConfigError
from tensafe.models import LoadedModel, build_tiny_llama, load_causal_lm
from tensafe.models.tiny import parse_tiny_llama_ref

VOCAB, HIDDEN = 49152, 64
# per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64, two norms
PER_LAYER = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3 + 2 * 64
TIED_PARAMS = VOCAB * HIDDEN + 2 * PER_LAYER + 64  # + final norm


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_shape(tiny_llama: Callable[..., LoadedModel]) -> None:
    tiny = tiny_llama()
    model, config = tiny.model, tiny.model.config
    assert (tiny.name, tiny.arch, tiny.source) == ("tiny-llama", "llama", "builtin")
    assert config.vocab_size == len(tiny.tokenizer) == VOCAB
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == TIED_PARAMS
    assert tiny.dtype == torch.float32 and tiny.device == torch.device("cpu")
    assert not model.training


def test_forward_on_real_tokens(tiny_llama: Callable[..., LoadedModel]) -> None:
    tiny = tiny_llama()
    batch = tiny.tokenizer(["Hello, world!"], return_tensors="pt")
    out = tiny.model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (1, 4, VOCAB)
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(
        torch.log(torch.tensor(VOCAB)).item(), rel=0.05
    )


def test_deterministic_for_a_seed_and_rng_untouched(
    tiny_llama: Callable[..., LoadedModel],
) -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b, c = tiny_llama(seed=5), tiny_llama(seed=5), tiny_llama(seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(a.model, b.model)
    assert not _same_weights(a.model, c.model)
    assert a.model is not b.model and a.tokenizer is not b.tokenizer


def test_untied(tiny_llama: Callable[..., LoadedModel]) -> None:
    tiny = tiny_llama(tie_word_embeddings=False)
    model = tiny.model
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == TIED_PARAMS + VOCAB * HIDDEN
    assert tiny.name == "tiny-llama:tied=false"


def test_dtype() -> None:
    assert build_tiny_llama(dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": 1.5}, "num_layers"),
        ({"num_heads": 3}, "hidden_size"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"seed": -1}, "seed"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_tiny_llama(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_name_round_trips_through_load_causal_lm() -> None:
    built = build_tiny_llama(tie_word_embeddings=False, num_layers=3, seed=3)
    assert built.name == "tiny-llama:layers=3,tied=false,seed=3"
    loaded = load_causal_lm("tiny-llama:seed=3, tied=false,layers=3")
    assert loaded.name == built.name and loaded.source == "builtin"
    assert _same_weights(built.model, loaded.model)


@pytest.mark.parametrize(
    "ref",
    ["tiny-llama:foo=1", "tiny-llama:tied=maybe", "tiny-llama:seed", "tiny-llama:seed=1,seed=2"],
)
def test_bad_tiny_refs(ref: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tiny_llama_ref(ref)
    assert info.value.field == "model_ref"
