"""Learned soup: ladle's frozen ingredients vs holding every ingredient with gradients.

ladle keeps the N ingredients as plain frozen tensors and learns only the mixing weights α and the
temperature β through `torch.func.functional_call`. The baseline does what the model-soups code
does: every ingredient's tensors are leaves that require gradients, so each step also allocates
and fills N model-sized gradients. Both run the same steps on the same data in fresh processes;
the script prints peak memory above the process's idle footprint, in units of one model, and time
per step. Target: ladle ≤ (N + 2) × model.

    .venv/bin/python bench/learned.py [--n 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ladle.soup.frozen_mix import frozen_weighted_sum as _mix


def make_ingredients(n: int, seed: int = 0):
    from ladle.models import model_spec

    spec = model_spec("efficientnet-lite0", 10)
    model = spec.build().eval()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    states = [{k: (v + 1e-3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
               for k, v in base.items()} for _ in range(n)]
    return model, states


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(mode: str, n: int, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    model, states = make_ingredients(n)
    param_keys = [k for k, _ in model.named_parameters()]
    model_mib = sum(states[0][k].numel() * states[0][k].element_size() for k in states[0]) / 2**20
    buffers = {k: v for k, v in states[0].items() if k not in set(param_keys)}
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for p in model.parameters():
        p.requires_grad_(False)
    if mode == "plain":  # one ordinary training step of one model: activations, one set of gradients
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)

        def plain_step():
            F.cross_entropy(model(x), y).backward()
            model.zero_grad(set_to_none=False)

        return {"mode": mode, "n": n, "model_mib": model_mib, **timed(plain_step, steps)}
    if mode == "baseline":  # every ingredient tensor is a leaf that wants a gradient
        for s in states:
            for k in param_keys:
                s[k].requires_grad_(True)
    alpha = torch.zeros(len(param_keys), n, requires_grad=True)
    beta = torch.ones((), requires_grad=True)
    optimizer = torch.optim.AdamW([alpha, beta], lr=0.05, weight_decay=0.0)

    def learn_step():
        w = alpha.softmax(-1)
        if mode == "ladle":  # what `ladle cook learned` runs
            params = {k: _mix([s[k] for s in states], w[j]) for j, k in enumerate(param_keys)}
        else:  # the mixture as an autograd graph over leaves that require gradients
            params = {}
            for j, k in enumerate(param_keys):
                acc = states[0][k] * w[j, 0]
                for i in range(1, n):
                    acc = acc + states[i][k] * w[j, i]
                params[k] = acc
        loss = F.cross_entropy(beta * functional_call(model, {**params, **buffers}, (x,)), y)
        optimizer.zero_grad()
        for s in states if mode == "baseline" else ():
            for k in param_keys:
                s[k].grad = None
        loss.backward()
        optimizer.step()

    return {"mode": mode, "n": n, "model_mib": model_mib, **timed(learn_step, steps)}


def timed(step, steps: int) -> dict:
    """One warm-up step, then `steps` timed ones: median seconds per step and peak memory."""
    step()
    after_warmup = rss_mib()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"peak_rss_mib": rss_mib(), "rss_after_warmup_mib": after_warmup, "step_s": sorted(times)[len(times) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2, help="small, so activations do not hide the parameter memory")
    parser.add_argument("--one", choices=["ladle", "baseline", "idle", "plain"])
    args = parser.parse_args()
    if args.one:
        if args.one == "idle":
            make_ingredients(args.n)
            print(json.dumps({"peak_rss_mib": rss_mib()}))
        else:
            print(json.dumps(run(args.one, args.n, args.steps, args.batch)))
        return
    results = {}
    for mode in ("idle", "plain", "ladle", "baseline"):
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--n", str(args.n), "--steps", str(args.steps),
                              "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    idle = results["idle"]["peak_rss_mib"]  # torch + model + N ingredients, before any learning
    model = results["ladle"]["model_mib"]
    print(f"learned soup, per-layer α, EfficientNet-Lite0 ({model:.1f} MiB), N = {args.n}, batch {args.batch} at 32 px")
    print(f"{'':<34}{'peak RSS MiB':>14}{'above idle':>12}{'models':>9}{'s/step':>9}")
    labels = {"plain": "one model, plain training step", "ladle": "ladle (frozen ingredients)",
              "baseline": "baseline (ingredients with grads)"}
    for mode in ("plain", "ladle", "baseline"):
        r = results[mode]
        extra = r["peak_rss_mib"] - idle
        print(f"{labels[mode]:<34}{r['peak_rss_mib']:>14.0f}{extra:>12.0f}{extra / model:>9.1f}{r['step_s']:>9.3f}")
    # Activations and autograd workspace are common to any training step: measure against the plain step,
    # which itself holds one model's gradients. Mixed parameters + workspace beyond that, in models:
    extra_ladle = (results["ladle"]["peak_rss_mib"] - results["plain"]["peak_rss_mib"]) / model + 1
    extra_base = (results["baseline"]["peak_rss_mib"] - results["plain"]["peak_rss_mib"]) / model + 1
    print(f"beyond the N ingredients and a plain step's activations: ladle {extra_ladle:.1f} models, "
          f"baseline {extra_base:.1f} models")
    print(f"ladle total ≈ N + {extra_ladle:.1f} = {args.n + extra_ladle:.1f} models (target ≤ N + 2 = {args.n + 2}: "
          f"{'PASS' if extra_ladle <= 2 else 'FAIL'}); baseline ≈ {args.n + extra_base:.1f}; "
          f"time per step {results['ladle']['step_s'] / results['baseline']['step_s']:.2f}x the baseline's")


if __name__ == "__main__":
    main()
