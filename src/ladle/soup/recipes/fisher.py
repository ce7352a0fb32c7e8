"""Fisher merging: each parameter the ingredients' values weighted by their diagonal Fisher information, the
posterior mode of a Laplace approximation of each ingredient (Matena & Raffel 2022):

    θ = Σᵢ (Fᵢ + ε)·θᵢ / Σᵢ (Fᵢ + ε)

Fᵢ = E_x Σ_c p(c|x)·(∂ log p(c|x)/∂θ)² over `--examples` examples of `--data`, the expectation over the model's own
predictive distribution: exact over the classes of a classifier; for a causal language model over its next-token
distributions, sampled (`--samples` draws per text, seeded by `--seed`). `--data` once for all ingredients, or once
per ingredient in order (each Fisher on its own ingredient's data). Fishers are computed one ingredient at a time
and accumulated at once (memory: the model and two accumulators, not N Fishers); tensors without a Fisher
(BatchNorm statistics) are averaged.
"""

from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import PrecomputedPlan, recipe
from ladle.soup.scoring import Scorer


@recipe("fisher", reference="Matena & Raffel 2022, Merging models with Fisher-weighted averaging (NeurIPS)")
def fisher(n: int, scorer: Scorer,
           examples: Annotated[int, "examples of --data the diagonal Fisher of each ingredient is estimated on"] = 256,
           epsilon: Annotated[float, "added to every Fisher entry: parameters no example moves are averaged"] = 1e-8,
           samples: Annotated[int, "language models: next tokens drawn per text from the model's distribution"] = 1,
           seed: Annotated[int, "language models: seed of the drawn next tokens"] = 0) -> PrecomputedPlan:
    """Fisher merging: each parameter weighted by each ingredient's diagonal Fisher information on the data."""
    from ladle.progress import progress_bar

    if examples < 1:
        raise LadleError(f"examples: must be at least 1, got {examples}")
    if not epsilon >= 0:
        raise LadleError(f"epsilon: must be non-negative, got {epsilon}")
    if samples < 1:
        raise LadleError(f"samples: must be at least 1, got {samples}")
    splits = scorer.ingredient_splits(n, "fisher")
    weighted, totals, mass = {}, {}, []
    for i in progress_bar(range(n), desc="fisher information", unit="ingredient", enabled=scorer.progress):
        diagonal = scorer.fisher_diagonal(i, examples, split=splits[i], seed=seed, samples=samples)
        state = scorer.ingredient_state(i)
        for key, f in diagonal.items():
            f = f + epsilon
            weighted[key] = weighted.get(key, 0) + f * state[key].double()
            totals[key] = totals.get(key, 0) + f
        mass.append(float(sum(float(f.sum()) for f in diagonal.values())))
    if any(float(t.min()) <= 0 for t in totals.values()):
        raise LadleError("fisher: some parameters have zero Fisher in every ingredient; give --epsilon > 0")
    merged = {k: (weighted[k] / totals[k]).float().numpy() for k in weighted}
    record = {"fisher": {"examples": examples, "epsilon": epsilon, "samples": samples, "seed": seed,
                         "split_per_ingredient": splits, "data": scorer.data_record(), "fisher_mass": mass}}
    return PrecomputedPlan(n, merged, record)
