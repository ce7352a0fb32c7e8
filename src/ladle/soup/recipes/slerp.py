from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_NONE, recipe


class SlerpPlan:
    """Per tensor, spherical interpolation between the two ingredients; linear when they are nearly parallel.

    `weights` are the linear fallback's (1 − t, t); spherical weights depend on each tensor's angle (trace)."""

    def __init__(self, t: float):
        self.t = t
        self.weights = [1.0 - t, t]
        self.base_weight = 0.0
        self.per_key: dict[str, dict] = {}

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import slerp

        a, b = tensors([0, 1])  # both at once: an angle needs the two
        merged, cos, linear = slerp(a, b, self.t, accumulate)
        self.per_key[key] = {"cos": None if cos is None else round(cos, 6), "linear": linear}
        return merged

    @property
    def notes(self) -> list[str]:
        from ladle.soup.mixing import SLERP_PARALLEL

        linear = sum(v["linear"] for v in self.per_key.values())
        if not linear:
            return []
        return [f"{linear} of {len(self.per_key)} tensors were nearly parallel (|cos| > {SLERP_PARALLEL}) or zero: "
                f"interpolated linearly"]

    def trace(self) -> dict:
        return {"slerp": self.per_key}


@recipe("slerp", base=BASE_NONE, reference="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH); as in mergekit")
def slerp(n: int, t: Annotated[float, "position between the first (0) and the second (1) ingredient"] = 0.5) -> SlerpPlan:
    """SLERP: spherical interpolation between exactly two models, tensor by tensor."""
    if n != 2:
        raise LadleError(f"slerp interpolates exactly two ingredients, got {n}")
    if not 0.0 <= t <= 1.0:
        raise LadleError(f"t: must be in [0, 1], got {t}")
    return SlerpPlan(t)
