"""Weighted kNN read-out of an encoder (Wu et al. 2018, as in DINO and the Self-Soupervision code): no head is
trained; each query's class scores are Σ exp(cos / T) over its k most similar labelled bank embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

K = 20
TEMPERATURE = 0.07


def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int, *,
               k: int = K, temperature: float = TEMPERATURE) -> torch.Tensor:
    """(queries, num_classes) scores from the k nearest bank embeddings by cosine, weighted by exp(cos / T)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be ≥ 1 and temperature > 0, got {k}, {temperature}")
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    top, index = sims.topk(min(k, len(bank)), dim=1)
    weights = (top / temperature).exp()
    scores = torch.zeros(len(queries), num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, bank_labels.to(index.device)[index], weights)


@torch.no_grad()
def embeddings(model, data, mean, std, *, device="cpu", batch_size: int | None = None) -> torch.Tensor:
    """The encoder's embedding (the classifier's input) of every image, in eval mode, on the CPU."""
    from ladle.data import unit
    from ladle.evaluation.evaluator import channels_last, eval_batch_size
    from ladle.models.encoder import embed

    batch_size = batch_size or eval_batch_size(device)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    was = model.training
    model.eval()
    try:  # batch by batch: streamed photos and uint8 caches as well as images in memory
        return torch.cat([embed(model, channels_last(((unit(x) - mean) / std).to(device))).float().cpu()
                          for x in data.batches(batch_size)])
    finally:
        model.train(was)


def knn_accuracy(model, bank, queries, mean, std, *, k: int = K, temperature: float = TEMPERATURE,
                 device="cpu") -> float:
    """Accuracy (0–1) of the kNN read-out: `bank` a labelled ImageSet (train), `queries` the one scored."""
    scores = knn_scores(embeddings(model, bank, mean, std, device=device), bank.y,
                        embeddings(model, queries, mean, std, device=device), bank.num_classes, k=k,
                        temperature=temperature)
    return (scores.argmax(1) == queries.y).float().mean().item()
