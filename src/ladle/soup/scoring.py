"""What an evaluation-driven recipe may ask for. Recipes declare it as a typed parameter (`scorer: Scorer`);
the caller provides an implementation (ladle.evaluation.scorer.Taster). Recipes never see data or models.
"""

from __future__ import annotations

from typing import Any, Protocol


class Scorer(Protocol):
    """Scores of ingredients and candidate soups on one split; `cook` binds it to the opened ingredients
    first, which checks that every ingredient fits the model (file and tensor named if not)."""

    ladle_capability = True  # a capability the caller provides, not a command-line flag
    names: list[str]  # one display name per ingredient
    split: str
    metric: str  # accuracy | nll (higher score is better either way)

    def bind(self, ingredients: list, keys: list[str], encoder_only: bool = False, base: Any = None) -> None: ...
    def score_ingredient(self, i: int) -> float: ...
    def score_soup(self, weights: list[float], must_reach: float | None = None, strictly: bool = False) -> float | None:
        ...  # None: certainly below must_reach (not above it, strictly), found without a full evaluation
    def soup_metrics(self, weights: list[float]) -> Any: ...  # .accuracy, .nll
    def data_record(self) -> dict: ...
    def use_shots(self, shots: int, seed: int = 0) -> None: ...
    # learned soups: frozen ingredients, a functional forward pass, batches of the split
    def parameter_keys(self) -> list[str]: ...
    def ingredient_state(self, i: int) -> dict: ...
    def base_state(self) -> dict: ...  # the stock's tensors (task-vector recipes)
    def ingredient_splits(self, n: int, recipe: str) -> list[str]: ...  # the data of each ingredient's statistics
    def input_grams(self, i: int, examples: int, split: str | None = None) -> dict: ...  # RegMean: XᵀX of layer inputs
    def fisher_diagonal(self, i: int, examples: int, split: str | None = None, seed: int = 0,
                        samples: int = 1) -> dict: ...  # Fisher merging: E_p[(∂ log p/∂θ)²]
    def soup_state(self, weights: list[float]) -> dict: ...
    def forward(self, state: dict, x: Any) -> Any: ...
    def loss(self, out: Any, y: Any, temperature: Any = 1.0) -> Any: ...  # what a learned soup minimises
    def embed(self, state: dict, x: Any) -> Any: ...  # label-free recipes: the classifier's input
    def batches(self, batch_size: int, generator: Any) -> Any: ...
    @property
    def device(self) -> Any: ...
    @property
    def progress(self) -> bool: ...
