"""Text outputs: strict JSON and the decision traces of evaluation-driven recipes."""

from __future__ import annotations


def strict_json(obj) -> str:
    """Strict JSON (RFC 8259): NaN and ±Inf, which non-finite ingredients or empty cells produce, become null."""
    import json
    import math

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, allow_nan=False, default=str)


def format_trace(trace: dict) -> str:
    """The decision trace of an evaluation-driven recipe as a table ('' for recipes without one)."""
    lines = []
    if "greedy" in trace:
        g = trace["greedy"]
        lines.append(f"greedy soup ({g['metric']} on {g['split']}, accept if {'not worse' if g['accept'] == 'ge' else 'better'})")
        lines.append(f"{'pass':>4}  {'candidate':<40}{'own':>8}{'soup':>8}  accepted  size")
        if any(s["soup_score"] is None for s in g["steps"]):
            lines[0] += "; 'stopped': its evaluation stopped once it could not be kept"
        for s in g["steps"]:
            name = s["candidate"] if len(s["candidate"]) <= 39 else "…" + s["candidate"][-38:]
            soup = "stopped" if s["soup_score"] is None else f"{100 * s['soup_score']:.2f}"
            lines.append(f"{s['pass']:>4}  {name:<40}{100 * s['ingredient_score']:>8.2f}{soup:>8}  "
                         f"{'yes' if s['accepted'] else 'no':<8}  {s['soup_size']:>4}")
    if "learned" in trace:
        learned = trace["learned"]
        lines.append(f"learned soup (per {learned['per']}): temperature {learned['temperature']:.3f}, "
                     f"loss per epoch {', '.join(f'{x:.4f}' for x in learned['loss_per_epoch'])}")
    if "season" in trace:
        chosen = trace["season"]["chosen"]
        lines.append(f"seasoning: {trace['season']['candidates']} candidates ({trace['season']['search']}) on "
                     f"{trace['season']['shots']} shots; chosen accuracy {100 * chosen['accuracy']:.2f}%")
    return "\n".join(lines)
