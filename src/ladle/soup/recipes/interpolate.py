from __future__ import annotations

from typing import Annotated

from ladle.soup.recipes import BASE_REQUIRED, Plan, recipe


@recipe("interpolate", base=BASE_REQUIRED, reference="Wortsman et al. 2022, WiSE-FT (arXiv:2109.01903)")
def interpolate(n: int, alpha: Annotated[float, "weight of the fine-tuned model (outside [0, 1] extrapolates)"]) -> Plan:
    """WiSE-FT: (1−α)·base + α·fine-tuned (the mean of them if several); α outside [0, 1] extrapolates."""
    from ladle.soup.mixing import interpolation_weights

    weights = interpolation_weights(alpha, n)
    notes = []
    if not 0.0 <= alpha <= 1.0:
        notes.append(f"alpha={alpha} is outside [0, 1]: this extrapolates beyond the {'base' if alpha < 0 else 'fine-tuned model'}")
    return Plan(weights[1:], base_weight=weights[0], notes=notes)
