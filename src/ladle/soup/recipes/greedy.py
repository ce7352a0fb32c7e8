from __future__ import annotations

from typing import Annotated, Literal

from ladle.errors import LadleError
from ladle.soup.recipes import Plan, recipe
from ladle.soup.scoring import Scorer

ACCEPT_RULES = {"ge": lambda new, best: new >= best, "gt": lambda new, best: new > best}


@recipe("greedy", reference="Wortsman et al. 2022, Model soups, Recipe 1 (arXiv:2203.05482)")
def greedy(n: int, scorer: Scorer,
           accept: Annotated[Literal["ge", "gt"], "keep a candidate if the soup is not worse (ge, paper) or better (gt, official code)"] = "ge",
           with_replacement: Annotated[bool, "candidates may be added again (non-uniform weights)"] = False,
           max_passes: Annotated[int, "with replacement: passes over the candidates at most"] = 5,
           full_scores: Annotated[bool, "score every candidate soup on the whole split (for the trace and its plot) "
                                        "instead of stopping a candidate as soon as it cannot be kept"] = False) -> Plan:
    """Greedy soup: rank by held-out accuracy, start from the best, add each next one if the soup is not worse.

    A candidate's evaluation stops as soon as its errors leave it unable to reach the soup it must match (the
    decision is a full evaluation's; its trace then holds no score, only the images it took)."""
    if max_passes < 1:
        raise LadleError(f"max_passes: must be at least 1, got {max_passes}")
    rule = ACCEPT_RULES[accept]
    scores = [scorer.score_ingredient(i) for i in range(n)]
    ranked = sorted(range(n), key=lambda i: -scores[i])  # stable: ties keep ingredient order
    counts = [0] * n
    counts[ranked[0]] = 1
    best = scores[ranked[0]]
    trace = [_step(scorer, ranked[0], scores[ranked[0]], scores[ranked[0]], True, 1, counts)]
    from ladle.progress import progress_bar

    for i in progress_bar(ranked[1:], desc="greedy soup", unit="candidate", enabled=scorer.progress):
        counts[i] += 1
        score = _taste(scorer, counts, best, accept == "gt", full_scores)
        accepted = score is not None and rule(score, best)
        if accepted:
            best = score
        else:
            counts[i] -= 1
        trace.append(_step(scorer, i, scores[i], score, accepted, 1, counts))
    passes = 1
    while with_replacement and passes < max_passes:
        passes += 1
        added = False
        for i in ranked:  # later passes must strictly improve, so the loop ends
            counts[i] += 1
            score = _taste(scorer, counts, best, True, full_scores)
            accepted = score is not None and score > best
            if accepted:
                best, added = score, True
            else:
                counts[i] -= 1
            trace.append(_step(scorer, i, scores[i], score, accepted, passes, counts))
        if not added:
            break
    return Plan(_weights(counts), record={"greedy": {
        "accept": accept, "with_replacement": with_replacement, "metric": scorer.metric, "split": scorer.split,
        "ingredient_scores": scores, "data": scorer.data_record(), "steps": trace, "final_score": best}})


def _taste(scorer, counts: list[int], best: float, strictly: bool, full: bool) -> float | None:
    """The candidate soup's score, or None once it is certain it cannot beat `best` (not worse: `strictly` off)."""
    if full:
        return scorer.score_soup(_weights(counts))
    return scorer.score_soup(_weights(counts), must_reach=best, strictly=strictly)


def _weights(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts]


def _step(scorer, i, own, soup, accepted, pass_no, counts) -> dict:
    step = {"pass": pass_no, "candidate": scorer.names[i], "index": i, "ingredient_score": own,
            "soup_score": soup, "accepted": accepted, "soup_size": sum(counts)}
    if soup is None:  # stopped early: it could not be kept
        step["stopped_after_images"] = getattr(scorer, "last_images", None)
    return step
