"""Model registry: names -> builders (``MODELS``), plus the ``tv:`` (torchvision) and ``timm:`` prefixes."""

from collections.abc import Callable

from torch import nn

from eakd.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")
register_model = MODELS.register


def list_models() -> list[str]:
    """Registered model names, sorted (``tv:<name>`` and ``timm:<name>`` are accepted on top)."""
    return MODELS.names()


def create_model(name: str, num_classes: int = 100, **kw: object) -> nn.Module:
    """Build a model by name; its forward returns ``(logits, feats)`` (see ``eakd.vision.models.common``).

    ``tv:resnet18`` builds a torchvision model, ``timm:<name>`` a timm one (``pretrained=True`` loads their
    default weights, which downloads); any other name must be registered (``@register_model``) or be a
    ``"package.module:function"``.
    """
    if name.startswith("tv:"):
        from eakd.vision.models.external import torchvision_model

        return torchvision_model(name.removeprefix("tv:"), num_classes=num_classes, **kw)  # type: ignore[arg-type]
    if name.startswith("timm:"):
        from eakd.vision.models.external import timm_model

        return timm_model(name.removeprefix("timm:"), num_classes=num_classes, **kw)  # type: ignore[arg-type]
    return MODELS.get(name)(num_classes=num_classes, **kw)
