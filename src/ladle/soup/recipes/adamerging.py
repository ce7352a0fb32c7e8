"""AdaMerging: task arithmetic whose coefficients are learned without labels, by minimising the entropy of the
merged model's predictions on unlabelled data (Yang et al. 2024).

θ = θ_base + Σᵢ λᵢ·τᵢ with one λ per ingredient (`--per model`) or per ingredient and tensor (`--per layer`,
"layer-wise AdaMerging"), every λ starting at `--init`, fit by Adam on the mean Shannon entropy of the softmax
predictions over `--data` (its labels are never read). Ingredients and base stay frozen by reference, as in the
learned soup (ladle.soup.frozen_mix); only the λ learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_REQUIRED, KeyedPlan, recipe
from ladle.soup.scoring import Scorer


@dataclass
class AdaMergingPlan(KeyedPlan):
    """θ_base + Σᵢ λᵢ,ₖ·τᵢ,ₖ per key, from the task vectors (as task arithmetic: exact as the τ are small).
    `weights`: the λ per ingredient (their mean over tensors with `--per layer`); the base weight 1 − Σλ depends on
    the key, hence None."""

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import accumulator_dtype, add_scaled_, task_vectors

        lambdas = self.by_key.get(key, self.weights)
        base = base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
        out = base.copy()
        for lam, tau in zip(lambdas, task_vectors(tensors(list(range(len(lambdas)))), base, accumulate)):
            add_scaled_(out, tau, lam)
        return out


@recipe("adamerging", base=BASE_REQUIRED, reference="Yang et al. 2024, AdaMerging: adaptive model merging for multi-task learning (ICLR)")
def adamerging(n: int, scorer: Scorer,
               per: Annotated[Literal["model", "layer"], "one coefficient per ingredient, or per ingredient and tensor"] = "layer",
               init: Annotated[float, "starting value of every coefficient λ"] = 0.3,
               epochs: Annotated[int, "epochs over the unlabelled data"] = 5,
               batch_size: Annotated[int, "examples per step"] = 64,
               lr: Annotated[float, "Adam learning rate of the coefficients"] = 1e-3,
               seed: Annotated[int, "seed of the batch order"] = 0) -> AdaMergingPlan:
    """AdaMerging: task-arithmetic coefficients (per model or per layer) learned by minimising prediction entropy
    on unlabelled data."""
    import torch

    from ladle.progress import progress_bar
    from ladle.soup.frozen_mix import frozen_weighted_sum

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise LadleError(f"epochs and batch_size must be at least 1 and lr positive, got {epochs}, {batch_size}, {lr}")
    if scorer.metric == "nll":
        raise LadleError("adamerging minimises the entropy of a classifier's predictions; a language model's corpus "
                         "has none to minimise")
    base = {k: v.to(scorer.device) for k, v in scorer.base_state().items()}
    floats = [k for k, v in base.items() if v.is_floating_point()]
    params = [k for k in scorer.parameter_keys() if k in set(floats)]  # what the λ are learned for
    rows = {k: j for j, k in enumerate(params)}
    for k in floats:  # a float buffer (BatchNorm statistics) follows its module's weight, else the mean λ
        owner = next((p for p in params if p.rsplit(".", 1)[0] == k.rsplit(".", 1)[0]), None)
        rows.setdefault(k, rows.get(owner, -1))
    states = [{k: v.to(scorer.device) for k, v in scorer.ingredient_state(i).items() if k in set(floats)}
              for i in range(n)]
    fixed = {k: v for k, v in base.items() if k not in set(floats)}  # integer buffers: the base's
    lambdas = torch.full((len(params) if per == "layer" else 1, n), float(init), requires_grad=True)
    optimizer = torch.optim.Adam([lambdas], lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def lam(k: str, table: torch.Tensor) -> torch.Tensor:
        return table[0] if per == "model" else (table.mean(0) if rows[k] < 0 else table[rows[k]])

    def mixed(k: str, table: torch.Tensor) -> torch.Tensor:  # θ = (1 − Σλ)·base + Σ λᵢθᵢ
        row = lam(k, table)
        w = torch.cat([(1.0 - row.sum()).reshape(1), row]).to(scorer.device)
        return frozen_weighted_sum([base[k], *(s[k] for s in states)], w).to(base[k].dtype)

    losses = []
    for _ in progress_bar(range(epochs), desc=f"adamerging (per {per})", unit="epoch", enabled=scorer.progress):
        total, count = 0.0, 0
        for x, labels in scorer.batches(batch_size, generator):  # the labels are only counted, never read
            state = dict(fixed)
            with torch.no_grad():  # BatchNorm statistics take no gradient: they follow their weight's λ
                state.update({k: mixed(k, lambdas.detach()) for k in floats if k not in set(params)})
            state.update({k: mixed(k, lambdas) for k in params})
            probs = scorer.forward(state, x).float().softmax(-1)
            loss = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        losses.append(total / count)
    learned = lambdas.detach().double()
    by_key = {k: lam(k, learned).tolist() for k in floats} if per == "layer" else {}
    record = {"adamerging": {"per": per, "init": init, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                             "split": scorer.split, "data": scorer.data_record(), "entropy_per_epoch": losses,
                             "lambdas": learned[0].tolist() if per == "model" else {k: by_key[k] for k in params}}}
    plan = AdaMergingPlan(learned.mean(0).tolist(), by_key=by_key, record=record)
    plan.base_weight = None
    return plan
