from __future__ import annotations

from ladle.soup.recipes import Plan, recipe


@recipe("uniform", reference="Wortsman et al. 2022, Model soups (arXiv:2203.05482)")
def uniform(n: int) -> Plan:
    """The mean of all ingredients."""
    return Plan([1.0 / n] * n)
