from __future__ import annotations

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_REQUIRED, recipe


class ModelStockPlan:
    """Per tensor, t from the angle between task vectors; out = t·mean(θᵢ) + (1−t)·θ_base."""

    def __init__(self, n: int):
        self.weights = [1.0 / n] * n
        self.base_weight = None  # depends on the key: see trace()
        self.notes: list[str] = []
        self.ratios: dict[str, dict[str, float]] = {}

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import model_stock_mix

        merged, t, cos = model_stock_mix(tensors(list(range(len(self.weights)))), base, accumulate)
        self.ratios[key] = {"t": round(t, 6), "cos": round(cos, 6)}
        return merged

    def trace(self) -> dict:
        return {"model_stock": self.ratios}


@recipe("model-stock", base=BASE_REQUIRED, reference="Jang et al. 2024, Model Stock (arXiv:2403.19522)")
def model_stock(n: int) -> ModelStockPlan:
    """Model Stock: per tensor, interpolate the mean towards the base by the task vectors' angle."""
    if n < 2:
        raise LadleError(f"model-stock needs at least two fine-tuned ingredients besides the base, got {n}")
    return ModelStockPlan(n)
