"""RegMean: the merge of linear layers that best reproduces every ingredient's outputs on its own inputs.

For each linear layer (nn.Linear, GPT-2's Conv1D, 1×1 convolutions), W = (Σᵢ G̃ᵢ)⁻¹ Σᵢ G̃ᵢ Wᵢ in the layer's
input space, with Gᵢ = XᵢᵀXᵢ the Gram matrix of the layer's inputs when ingredient i runs on the data and
G̃ = α·G + (1 − α)·diag(G) (Jin et al. 2023); every other tensor is averaged. `--data` once for all ingredients,
or once per ingredient in order (each Gram on its own ingredient's data, as in the paper's merges of different
tasks). An input that is always zero on the data (a dead unit) constrains nothing: its row of W is the ingredients'
mean. Grams come one ingredient at a time and are summed at once: memory is the model and, per layer, two
accumulators (Σ G̃ᵢ and Σ G̃ᵢ Wᵢᵀ).
"""

from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import PrecomputedPlan, recipe
from ladle.soup.scoring import Scorer


@recipe("regmean", reference="Jin et al. 2023, Dataless knowledge fusion by merging weights of language models (RegMean, ICLR)")
def regmean(n: int, scorer: Scorer,
            alpha: Annotated[float, "weight of the off-diagonal Gram entries (1: plain Gram; below 1 regularises)"] = 0.9,
            examples: Annotated[int, "examples of --data whose layer inputs make each Gram matrix"] = 256) -> PrecomputedPlan:
    """RegMean: each linear layer merged by least squares on the ingredients' own layer inputs; the rest averaged."""
    import numpy as np
    import torch

    from ladle.progress import progress_bar

    if not 0.0 <= alpha <= 1.0:
        raise LadleError(f"alpha: must be in [0, 1], got {alpha}")
    if examples < 1:
        raise LadleError(f"examples: must be at least 1, got {examples}")
    grams_sum: dict[str, torch.Tensor] = {}
    products: dict[str, torch.Tensor] = {}
    layouts: dict[str, bool] = {}
    splits = scorer.ingredient_splits(n, "regmean")
    for i in progress_bar(range(n), desc="regmean Gram matrices", unit="ingredient", enabled=scorer.progress):
        grams = scorer.input_grams(i, examples, split=splits[i])
        state = scorer.ingredient_state(i)
        for key, (gram, fan_in_first) in grams.items():
            if key not in state:
                continue
            layouts[key] = fan_in_first
            regular = alpha * gram + (1.0 - alpha) * torch.diag(torch.diagonal(gram))
            weight = _fan_in_first(state[key], fan_in_first)
            grams_sum[key] = grams_sum.get(key, 0) + regular
            products[key] = products.get(key, 0) + regular @ weight
    merged, conditions, dead_inputs = {}, {}, {}
    for key, total in grams_sum.items():
        dead = torch.diagonal(total) == 0  # inputs that are always zero (dead units): their weights follow the mean
        if dead.any():
            total[dead, dead] = float(n)
            products[key][dead] = sum(_fan_in_first(scorer.ingredient_state(i)[key], layouts[key])[dead]
                                      for i in range(n))
            dead_inputs[key] = int(dead.sum())
        try:
            solved = torch.linalg.solve(total, products[key])
        except RuntimeError:
            raise LadleError(f"the Gram matrix of layer '{key}' is singular (its inputs span fewer than "
                             f"{total.shape[0]} directions): lower --alpha below 1 to regularise it") from None
        conditions[key] = float(torch.linalg.cond(total))
        shape = scorer.ingredient_state(0)[key].shape
        merged[key] = (solved if layouts[key] else solved.T).reshape(shape).numpy().astype(np.float32)
    record = {"regmean": {"alpha": alpha, "examples": examples, "split_per_ingredient": splits,
                          "data": scorer.data_record(), "layers": len(merged),
                          "gram_condition": {k: round(v, 3) for k, v in conditions.items()}, "dead_inputs": dead_inputs}}
    return PrecomputedPlan(n, merged, record)


def _fan_in_first(weight, fan_in_first: bool):
    """A linear layer's weight as fan_in × fan_out (float64): Linear and 1×1 convolutions store it transposed."""
    w = weight.reshape(weight.shape[0], -1).double()
    return w if fan_in_first else w.T
