"""LoRA adapters switched per request on one shared base model (peft multi-adapter).

A sampler serves three kinds of weights from a single copy of the base model:

* ``None`` — the model as its owner uses it (a training run's active adapter);
* :data:`~tensafe.generation.params.BASE_MODEL` — every adapter switched off;
* a named adapter, loaded from in-memory tensors (a ``lora_adapter`` sampler
  checkpoint: ``get_peft_model_state_dict`` keys + the peft ``LoraConfig`` as a
  dict) with ``add_adapter`` and ``set_peft_model_state_dict``.

peft's adapter calls change more than the active adapter: ``set_adapter`` and
``add_adapter`` rewrite ``requires_grad`` of the adapters' weights (adding an
inference-mode adapter even freezes the *active* one), and adding an adapter
initialises weights with torch's global RNG. :func:`serving_state` therefore
snapshots every parameter's ``requires_grad``, every module's train/eval mode and
the active adapter, and restores them exactly; adapters are loaded inside
``torch.random.fork_rng``. Loaded adapters are frozen (``requires_grad=False``) and
never reach a training run's optimizer, whose parameter list is fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from torch import nn

from tensafe.errors import ConfigError
from tensafe.generation.params import BASE_MODEL


@contextlib.contextmanager
def serving_state(model: nn.Module) -> Iterator[None]:
    """Restore on exit what generation and adapter switching may change: each
    parameter's ``requires_grad``, each module's ``training`` flag and (peft) the
    active adapter."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    active = model.active_adapter if isinstance(model, PeftModel) else None
    try:
        yield
    finally:
        if (
            isinstance(model, PeftModel)
            and isinstance(active, str)
            and active in model.peft_config
            and model.active_adapter != active
        ):
            model.set_adapter(active)
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def lora_config_from_dict(config: Mapping[str, object]) -> LoraConfig:
    """A peft ``LoraConfig`` (in inference mode) from its ``to_dict()`` form, as
    stored in a ``lora_adapter`` checkpoint manifest.

    Raises:
        ConfigError: (``lora_config...``) not a LoRA config, unknown keys, or
            values peft refuses.
    """
    if not isinstance(config, Mapping):
        raise ConfigError("lora_config", "must be a mapping (peft LoraConfig.to_dict())")
    data = dict(config)
    peft_type = str(data.pop("peft_type", "LORA")).rsplit(".", 1)[-1]
    if peft_type != "LORA":
        raise ConfigError("lora_config.peft_type", f"must be 'LORA', got {peft_type!r}")
    known = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError("lora_config", f"unknown keys: {', '.join(unknown)}")
    data["inference_mode"] = True
    try:
        return LoraConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError("lora_config", str(exc)) from None


class AdapterSet:
    """The adapters loaded on one model, and switching between them.

    Not thread-safe by itself: the :class:`~tensafe.generation.Sampler` calls it
    while holding the model lock.

    Args:
        model: the model (a peft model, or a plain causal LM that is wrapped with
            peft when the first adapter is loaded).
        allow_adapters: ``False`` for a model whose base weights are being trained
            (full fine-tuning): a LoRA checkpoint's base is not those weights, and
            there is no base model to fall back to.
        model_name: the base model's name; a checkpoint config naming another
            ``base_model_name_or_path`` is refused.
        max_adapters: how many adapters may be loaded at once.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        allow_adapters: bool,
        model_name: str | None,
        max_adapters: int,
    ) -> None:
        self.model = model
        self._allow = allow_adapters
        self._model_name = model_name
        self._max = max_adapters
        self._wrapped_here = False  # we wrapped a plain model: None means the base
        self._loaded: dict[str, None] = {}  # names we loaded, least recently used first

    @property
    def names(self) -> tuple[str, ...]:
        """Loaded adapter names, least recently used first."""
        return tuple(self._loaded)

    def check(self, adapter: str | None) -> None:
        """Raise ConfigError (``adapter``) unless ``adapter`` can be served."""
        if adapter is None or adapter in self._loaded:
            return
        if adapter == BASE_MODEL:
            if not self._allow:
                raise ConfigError(
                    "adapter", "this model trains all its weights; it has no separate base model"
                )
            return
        raise ConfigError("adapter", f"no adapter named {adapter!r} is loaded")

    def load(
        self, *, name: str, tensors: Mapping[str, torch.Tensor], lora_config: Mapping[str, object]
    ) -> None:
        """Add adapter ``name`` with the given weights (frozen, inactive).

        Raises:
            ConfigError: adapters not allowed on this model, a bad or taken name,
                too many adapters, a bad config, or tensors that do not match it;
                (``tensors``) a tensor that is not a LoRA weight (e.g. a bias trained
                with ``bias="all"``) and differs from this model's: loading it would
                overwrite the base model's own tensor, which the model's run, its other
                adapters and (from a :class:`~tensafe.models.BaseModelPool`) other runs
                share. Such a tensor equal to the model's is skipped (peft saves the
                tied ``lm_head`` weight with an adapter of it). Nothing is left loaded
                when it raises.
        """
        if not self._allow:
            raise ConfigError("lora_config", "LoRA adapters cannot be loaded on this model")
        self._check_new_name(name)
        config = lora_config_from_dict(lora_config)
        base = config.base_model_name_or_path
        if self._model_name is not None and base is not None and base != self._model_name:
            raise ConfigError(
                "lora_config.base_model_name_or_path",
                f"the adapter was trained on {base!r}, this model is {self._model_name!r}",
            )
        device = next(self.model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), serving_state(self.model):
            wrapped = self._inject(name, config)
            try:
                self._set_weights(name, tensors)
            except BaseException:
                self._drop(name, unwrap=wrapped)
                raise
        for param_name, param in self.model.named_parameters():
            if f".{name}." in param_name:
                param.requires_grad_(False)
        self._loaded[name] = None

    def remove(self, name: str) -> None:
        """Unload adapter ``name``.

        Raises:
            ConfigError: (``name``) no adapter of that name was loaded here.
        """
        if name not in self._loaded:
            raise ConfigError("name", f"no adapter named {name!r} is loaded")
        with serving_state(self.model):
            self._drop(name, unwrap=self._wrapped_here and len(self._loaded) == 1)
        del self._loaded[name]

    @contextlib.contextmanager
    def activate(self, adapter: str | None) -> Iterator[nn.Module]:
        """Eval mode with ``adapter`` active (see the module doc); yields the model
        to call. Everything is restored on exit."""
        self.check(adapter)
        model = self.model
        with serving_state(model):
            model.eval()
            if adapter is None and not self._wrapped_here:
                yield model
            elif adapter in (None, BASE_MODEL):
                with model.disable_adapter() if isinstance(model, PeftModel) else _nothing():
                    yield model
            else:
                self._loaded[adapter] = self._loaded.pop(adapter)  # most recently used
                model.set_adapter(adapter)
                yield model

    # ------------------------------------------------------------------ helpers
    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or name.startswith("__") or "." in name:
            raise ConfigError(
                "name", "must be a non-empty string without '.' that does not start with '__'"
            )
        taken = set(getattr(self.model, "peft_config", {})) | set(self._loaded)
        if name in taken:
            raise ConfigError("name", f"an adapter named {name!r} already exists on this model")
        if len(self._loaded) >= self._max:
            raise ConfigError("name", f"{self._max} adapters are loaded already; remove one first")

    def _inject(self, name: str, config: LoraConfig) -> bool:
        """Add the adapter's (initialised) layers; True if the model was wrapped now."""
        try:
            if isinstance(self.model, PeftModel):
                self.model.add_adapter(name, config)
                return False
            self.model = get_peft_model(self.model, config, adapter_name=name)  # type: ignore[arg-type]
            self._wrapped_here = True
            return True
        except ValueError as exc:
            raise ConfigError("lora_config", f"does not fit this model: {exc}") from None

    def _set_weights(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        adapter_tensors = self._adapter_only(tensors)
        try:
            result = set_peft_model_state_dict(self.model, adapter_tensors, adapter_name=name)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError("tensors", f"do not fit the adapter's config: {exc}") from None
        unexpected = sorted(result.unexpected_keys)
        missing = sorted(k for k in result.missing_keys if f".{name}." in k)
        if unexpected or missing:
            detail = f"unexpected {unexpected[:3]}" if unexpected else f"missing {missing[:3]}"
            raise ConfigError("tensors", f"do not match the adapter's config: {detail}")

    def _adapter_only(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` without the base-model tensors peft would copy into the model in
        place; each must equal the model's own (else ConfigError ``tensors``)."""
        current = self.model.state_dict(keep_vars=True)
        kept: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            mine = current.get(key)
            if mine is None or any(part.startswith("lora_") for part in key.split(".")):
                kept[key] = value  # an adapter weight (or a key peft reports as unexpected)
                continue
            same = mine.shape == value.shape and torch.equal(
                mine.detach(), value.to(mine.device, mine.dtype)
            )
            if not same:
                raise ConfigError(
                    "tensors",
                    f"{key} is not a LoRA weight and differs from this model's own tensor: "
                    "loading it would overwrite the base model that other weights share",
                )
        return kept

    def _drop(self, name: str, *, unwrap: bool) -> None:
        model = self.model
        assert isinstance(model, PeftModel)
        if unwrap:
            self.model = model.unload()
            self._wrapped_here = False
        else:
            model.delete_adapter(name)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


__all__ = ["AdapterSet", "lora_config_from_dict", "serving_state"]
