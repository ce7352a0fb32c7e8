import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from ladle.errors import LadleError
from ladle.soup.recipes import KeyedPlan, recipe


@recipe("learned", reference="Wortsman et al. 2022, Model soups, learned soup (arXiv:2203.05482)")
def learned(n: int, evaluator, per: str = "model", epochs: int = 5, batch_size: int = 64, lr: float = 0.05,
            seed: int = 0) -> KeyedPlan:
    """Learned soup: mixing weights (softmax, per model or per tensor) and a logit temperature, fit on held-out data."""
    if per not in ("model", "layer"):
        raise LadleError(f"per: must be 'model' or 'layer', got '{per}'")
    if epochs < 1 or batch_size < 1:
        raise LadleError("epochs and batch_size must be at least 1")
    ev = evaluator.evaluator
    model = ev.model.eval()
    param_keys = [k for k, p in model.named_parameters() if p.is_floating_point()]
    # Ingredients stay frozen and shared (lazy views, no copies, no gradients); only alpha and beta learn.
    states = [evaluator.ingredient_state(i) for i in range(n)]
    alpha = torch.zeros((len(param_keys) if per == "layer" else 1, n), requires_grad=True)
    beta = torch.ones((), requires_grad=True)  # temperature on the logits
    optimizer = torch.optim.AdamW([alpha, beta], lr=lr, weight_decay=0.0)
    uniform = [1.0 / n] * n
    buffers = {k: v.to(ev.device) for k, v in evaluator.soup_state(uniform).items() if k not in set(param_keys)}
    device_states = [{k: s[k].to(ev.device) for k in param_keys} for s in states]
    x, y = ev.inputs(evaluator.split), ev.labels(evaluator.split)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(epochs), desc=f"learned soup (per {per})", leave=False, disable=not ev.progress):
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            w = alpha.softmax(-1).to(ev.device)
            params = {k: _mix([s[k] for s in device_states], w[j if per == "layer" else 0]) for j, k in enumerate(param_keys)}
            logits = functional_call(model, {**params, **buffers}, (x[idx].to(ev.device),))
            loss = F.cross_entropy(beta * logits, y[idx].to(ev.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
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
                          "split": evaluator.split, "data": evaluator.data_record(), "temperature": beta.item(), "loss_per_epoch": losses,
                          "weights": per_model if per == "model" else by_key}}
    return KeyedPlan(per_model, by_key=by_key, record=record)


class _FrozenMix(torch.autograd.Function):
    """Σ wᵢ·θᵢ with gradients for w only: ∂L/∂wᵢ = ⟨∂L/∂out, θᵢ⟩.

    Autograd's own graph of products would keep model-sized temporaries per ingredient; this keeps
    references to the frozen θᵢ and allocates one output, so memory stays near (N + 2) × one model.
    """

    @staticmethod
    def forward(ctx, w, *tensors):
        ctx.tensors = tensors  # frozen ingredients: references, never copies
        out = tensors[0].to(torch.promote_types(tensors[0].dtype, w.dtype), copy=True).mul_(float(w[0]))
        for t, wi in zip(tensors[1:], w[1:].tolist()):
            out.add_(t, alpha=wi)
        return out

    @staticmethod
    def backward(ctx, grad):
        g = grad.reshape(-1)
        grad_w = torch.stack([torch.dot(g, t.reshape(-1).to(g.dtype)) for t in ctx.tensors])
        return (grad_w, *([None] * len(ctx.tensors)))


def _mix(tensors, w):
    return _FrozenMix.apply(w, *tensors)
