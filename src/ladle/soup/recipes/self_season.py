from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import Plan, recipe
from ladle.soup.scoring import Scorer


def neighbour_entropy(embeddings, k: int = 16, temperature: float = 0.07):
    """Mean entropy of a softmax (at T) over each embedding's top-k cosine similarities to the rest of the batch
    (itself excluded): low when each image has a few clear neighbours, i.e. when the embedding clusters."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(embeddings.float(), dim=1)
    sims = z @ z.T
    sims = sims.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    top = sims.topk(min(k, len(z) - 1), dim=1).values
    p = (top / temperature).softmax(dim=1)
    return -(p * p.clamp_min(1e-12).log()).sum(dim=1).mean()


@recipe("self-season", scores_on="test",
        reference="Fuller, Green, Shelhamer 2026, Self-Soupervision (label-free self-seasoning)")
def self_season(n: int, scorer: Scorer,
                k: Annotated[int, "in-batch neighbours per embedding"] = 16,
                temperature: Annotated[float, "softmax temperature over the neighbours' cosine similarities"] = 0.07,
                lr: Annotated[float, "Adam learning rate of the mixing weights, at the start"] = 0.1,
                final_lr: Annotated[float, "the learning rate the cosine decays to"] = 0.01,
                epochs: Annotated[int, "epochs over the (unlabelled) data"] = 10,
                batch_size: Annotated[int, "images per step (more than k)"] = 64,
                seed: Annotated[int, "seed of the batch order"] = 0) -> Plan:
    """Self-seasoning: label-free mixing weights (softmax, from uniform) that minimise the neighbour entropy of the
    soup's embeddings on the target data; the weights of the lowest-loss epoch are kept. Labels are never read."""
    import torch
    from ladle.progress import progress_bar

    from ladle.soup.frozen_mix import frozen_ingredients, frozen_weighted_sum

    if k < 1 or batch_size <= k or epochs < 1 or temperature <= 0 or lr <= 0 or final_lr < 0:
        raise LadleError(f"self-season: need k ≥ 1, batch_size > k, epochs ≥ 1, temperature > 0, lr > 0, final_lr ≥ 0; "
                         f"got k {k}, batch_size {batch_size}, epochs {epochs}, temperature {temperature}, lr {lr}")
    param_keys, states, buffers = frozen_ingredients(scorer, n)  # frozen references: (N + 2) models, as learned
    alpha = torch.zeros(n, requires_grad=True)
    optimizer = torch.optim.Adam([alpha], lr=lr)
    steps_per_epoch = sum(1 for _ in scorer.batches(batch_size, torch.Generator().manual_seed(seed)))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch, eta_min=final_lr)
    generator = torch.Generator().manual_seed(seed)
    losses, weights_per_epoch = [], []
    for _ in progress_bar(range(epochs), desc="self-season", unit="epoch", enabled=scorer.progress):
        total, count = 0.0, 0
        for x, labels_unused in scorer.batches(batch_size, generator):
            size = len(labels_unused)  # (x may be a text batch: a dict of tensors)
            if size <= k:
                continue  # a last batch too small to have k neighbours
            w = alpha.softmax(-1).to(scorer.device)
            params = {key: frozen_weighted_sum([s[key] for s in states], w) for key in param_keys}
            loss = neighbour_entropy(scorer.embed({**params, **buffers}, x), k, temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * size, count + size
        if count == 0:
            raise LadleError(f"self-season: the {scorer.split} split has no batch of more than k = {k} images")
        losses.append(total / count)
        weights_per_epoch.append(alpha.detach().double().softmax(-1).tolist())
    best = min(range(epochs), key=losses.__getitem__)
    return Plan(weights_per_epoch[best], record={"self_season": {
        "k": k, "temperature": temperature, "lr": lr, "final_lr": final_lr, "epochs": epochs, "batch_size": batch_size,
        "seed": seed, "split": scorer.split, "data": scorer.data_record(), "labels": "never read",
        "loss_per_epoch": losses, "weights_per_epoch": weights_per_epoch, "kept_epoch": best + 1}})
