"""Model specs -> nn.Module (one registry entry per prefix), weight loading, and small factories for tests."""

from ladle.models.specs import (BUILTIN_STOCK, MODEL_KINDS, ModelSpec, build_model, efficientnet_lite0, load_weights,
                                model_spec, small_resnet, tiny_cnn)

__all__ = ["BUILTIN_STOCK", "MODEL_KINDS", "ModelSpec", "build_model", "efficientnet_lite0", "load_weights", "model_spec",
           "small_resnet", "tiny_cnn"]
