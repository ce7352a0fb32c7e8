from __future__ import annotations

from typing import Annotated, Literal

from ladle.errors import LadleError
from ladle.soup.recipes import KeyedPlan, recipe
from ladle.soup.scoring import Scorer


@recipe("learned", reference="Wortsman et al. 2022, Model soups, learned soup (arXiv:2203.05482)")
def learned(n: int, scorer: Scorer,
            per: Annotated[Literal["model", "layer"], "one mixing weight per model or per tensor"] = "model",
            epochs: Annotated[int, "epochs over the held-out data"] = 5,
            batch_size: Annotated[int, "examples per step"] = 64,
            lr: Annotated[float, "AdamW learning rate of the mixing weights and the temperature"] = 0.05,
            seed: Annotated[int, "seed of the batch order"] = 0) -> KeyedPlan:
    """Learned soup: mixing weights (softmax, per model or per tensor) and a logit temperature, fit on held-out data."""
    import torch
    from ladle.progress import progress_bar

    from ladle.soup.frozen_mix import frozen_ingredients, frozen_weighted_sum

    if epochs < 1 or batch_size < 1:
        raise LadleError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    # Ingredients stay frozen and shared (lazy views, no copies, no gradients); only alpha and beta learn.
    param_keys, states, buffers = frozen_ingredients(scorer, n)
    alpha = torch.zeros((len(param_keys) if per == "layer" else 1, n), requires_grad=True)
    beta = torch.ones((), requires_grad=True)  # temperature on the logits
    optimizer = torch.optim.AdamW([alpha, beta], lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in progress_bar(range(epochs), desc=f"learned soup (per {per})", unit="epoch", enabled=scorer.progress):
        total, count = 0.0, 0
        for x, y in scorer.batches(batch_size, generator):
            w = alpha.softmax(-1).to(scorer.device)
            params = {k: frozen_weighted_sum([s[k] for s in states], w[j if per == "layer" else 0])
                      for j, k in enumerate(param_keys)}
            loss = scorer.loss(scorer.forward({**params, **buffers}, x), y, beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(y), count + len(y)  # (a corpus: per text, not per token)
        losses.append(total / count)
    weights = alpha.detach().double().softmax(-1)
    per_model = weights.mean(0).tolist()
    by_key = {}
    if per == "layer":
        by_key = {k: weights[j].tolist() for j, k in enumerate(param_keys)}
        for k in (k for k, v in buffers.items() if v.is_floating_point()):  # a module's buffers follow its weight's mixture
            module = k.rsplit(".", 1)[0]
            owner = next((p for p in param_keys if p.rsplit(".", 1)[0] == module), None)
            if owner is not None:
                by_key[k] = by_key[owner]
    record = {"learned": {"per": per, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                          "split": scorer.split, "data": scorer.data_record(), "temperature": beta.item(),
                          "loss_per_epoch": losses, "weights": per_model if per == "model" else by_key}}
    return KeyedPlan(per_model, by_key=by_key, record=record)
