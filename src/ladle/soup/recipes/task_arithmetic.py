from __future__ import annotations

from typing import Annotated

from ladle.soup.recipes import BASE_REQUIRED, recipe


class TaskArithmeticPlan:
    """θ_base + λ·Σ τᵢ per tensor. Equal to the linear soup with weights λ and base weight 1 − nλ (as the
    manifest says), but computed from the task vectors, so the result is as exact as the τᵢ are small."""

    elementwise = True  # every entry on its own: large tensors may be mixed in blocks

    def __init__(self, n: int, lambda_: float):
        self.lambda_ = lambda_
        self.weights = [lambda_] * n
        self.base_weight = 1.0 - n * lambda_
        self.notes: list[str] = []

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import accumulator_dtype, task_arithmetic, task_vectors

        base = base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
        return task_arithmetic(base, task_vectors(tensors(list(range(len(self.weights)))), base, accumulate),
                               self.lambda_, accumulate)

    def trace(self) -> dict:
        return {}


@recipe("task-arithmetic", base=BASE_REQUIRED, reference="Ilharco et al. 2023, Editing models with task arithmetic (arXiv:2212.04089)")
def task_arithmetic(n: int, lambda_: Annotated[float, "scale of the summed task vectors (negative: forget the tasks)"] = 1.0) -> TaskArithmeticPlan:
    """Task arithmetic: base + λ·Σ (fine-tuned − base); a negative λ subtracts the tasks."""
    return TaskArithmeticPlan(n, lambda_)
