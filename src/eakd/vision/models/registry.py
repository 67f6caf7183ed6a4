"""Model registry: names -> builders, plus the ``tv:`` (torchvision) and ``timm:`` prefixes."""

from collections.abc import Callable

from torch import nn

ModelBuilder = Callable[..., nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``fn(num_classes=..., **kw) -> nn.Module`` under ``name``."""

    def add(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    """Registered model names, sorted (``tv:<name>`` and ``timm:<name>`` are accepted on top)."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 100, **kw: object) -> nn.Module:
    """Build a model by name; its forward returns ``(logits, feats)`` (see ``eakd.vision.models.common``).

    ``tv:resnet18`` builds a torchvision model, ``timm:<name>`` a timm one (``pretrained=True`` loads their
    default weights, which downloads); any other name must be registered.
    """
    if name.startswith("tv:"):
        from eakd.vision.models.external import torchvision_model

        return torchvision_model(name.removeprefix("tv:"), num_classes=num_classes, **kw)  # type: ignore[arg-type]
    if name.startswith("timm:"):
        from eakd.vision.models.external import timm_model

        return timm_model(name.removeprefix("timm:"), num_classes=num_classes, **kw)  # type: ignore[arg-type]
    if name not in _MODELS:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; known models: {known} (or tv:<name>, timm:<name>)")
    return _MODELS[name](num_classes=num_classes, **kw)
