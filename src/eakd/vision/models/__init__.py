"""Image-classification model zoo: every model's forward returns ``(logits, feats)`` (see ``common``).

    from eakd.vision.models import create_model, load_checkpoint
    teacher = create_model("resnet32x4", num_classes=100)
    load_checkpoint(teacher, "cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth")
"""

from eakd.vision.models import mobilenet, resnet, shufflenet, small, vgg, wrn  # noqa: F401  (registration)
from eakd.vision.models.checkpoint import load_checkpoint
from eakd.vision.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "load_checkpoint", "register_model"]
