"""The scorer evaluation-driven recipes ask (ladle.soup.scoring.Scorer); ladle.evaluation.tasting builds one from specs.

`cook` binds it to the opened ingredients, which checks that every ingredient fits the model (keys and shapes,
naming the file and the tensor) before any scoring; candidate soups are mixed in memory by the same streaming
code that writes soups to disk, and their logits are cached by their weights.
"""

from __future__ import annotations

import hashlib

import torch

from ladle.errors import LadleError
from ladle.data.text import model_inputs
from ladle.evaluation.evaluator import Evaluator, Metrics, channels_last
from ladle.models.encoder import embed, head_keys
from ladle.models.hf_names import call_with_state
from ladle.io.dtypes import to_torch
from ladle.soup.stream import mix_stream


class Taster:
    """Scores of ingredients and candidate soups on one split of an Evaluator."""

    def __init__(self, evaluator: Evaluator, split: str = "heldout", metric: str = "accuracy"):
        if split not in evaluator.splits:
            raise LadleError(f"data: no '{split}' split to taste on (have: {', '.join(evaluator.splits)})")
        if metric not in ("accuracy", "nll", "score"):
            raise LadleError(f"metric: must be accuracy or nll, got '{metric}'")
        if getattr(evaluator.splits[split], "task", None) == "lm":
            metric = "nll"  # a corpus has no accuracy: a language model's soup is kept while its loss is not worse
        if evaluator.metric is not None:
            metric = "score"  # a user's --metric, higher is better
        self.evaluator = evaluator
        self.split = split
        self.metric = metric
        self.ingredients = []
        self.keys: list[str] = []
        self.base = None  # the stock (an Ingredient), when the recipe has one
        self.headless: list[str] = []  # head keys the ingredients lack (encoder-only): nothing to score with
        self.names: list[str] = []
        self.spec = None  # the TastingSpec it was built from (make_scorer), if any: remakes the soup
        self.given_splits: list[str] | None = None  # every --data in order (make_scorer): one per ingredient or one
        self._file_keys: list[list[str]] | None = None
        self.last_images = 0  # images the last early-rejecting score_soup pushed through the model

    @property
    def device(self) -> torch.device:
        return self.evaluator.device

    @property
    def progress(self) -> bool:
        return self.evaluator.progress

    def bind(self, ingredients, keys: list[str], encoder_only: bool = False, base=None) -> None:
        """Use these ingredients; each must fit the model exactly (no missing, extra or mis-shaped tensor), but for
        the head with `encoder_only` (the model's own head then stands in). `base`: the stock, for recipes that
        learn on task vectors."""
        self.ingredients, self.keys, self.base = list(ingredients), list(keys), base
        self._file_keys = None
        names = [i.name for i in self.ingredients]
        # cache keys must tell apart the same file given twice
        self.names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
        self._group = hashlib.sha256("\n".join(self.names).encode()).hexdigest()[:12]
        own = {k: tuple(v.shape) for k, v in self.evaluator.model.state_dict().items()}
        given = set(keys)
        optional = set(head_keys(self.evaluator.model)) if encoder_only else set()
        missing = [k for k in own if k not in given and k not in optional]
        self.headless = [k for k in own if k not in given and k in optional]  # scores would read a fresh head
        if missing:
            raise LadleError("does not fit the model: it needs this tensor (check --include/--exclude)",
                             file=self.ingredients[0].name, key=missing[0])
        for ing in self.ingredients:
            for k in keys:
                if k not in own:
                    raise LadleError("does not fit the model: a tensor the model does not have "
                                     "(check --model, or --exclude it)", file=ing.name, key=k)
                shape = tuple(ing.info(k).shape)
                if shape != own[k]:
                    raise LadleError(f"does not fit the model: shape {list(shape)}, the model needs {list(own[k])} "
                                     "(check --model and --num-classes)", file=ing.name, key=k)

    def data_record(self) -> dict:
        """Where the scores come from, for the manifest: every split's source, indices and fingerprint."""
        record = {name: data.source for name, data in self.evaluator.splits.items()} | {"bn": self.evaluator.bn}
        return record | self.evaluator.record  # the transform and precision, when the evaluator knows them

    def base_state(self) -> dict[str, torch.Tensor]:
        """The base's tensors (views of its file) under the bound keys."""
        if self.base is None:
            raise LadleError("this recipe learns on task vectors: it needs the base model (--base)")
        return {k: self.base.get(k) for k in self.keys}

    def ingredient_state(self, i: int) -> dict[str, torch.Tensor]:
        ing = self.ingredients[i]
        return {k: ing.get(k) for k in self.keys}

    def soup_state(self, weights, by_key: dict | None = None) -> dict[str, torch.Tensor]:
        from ladle.soup.adapters import UpdatedModel, updated_soup_state
        from ladle.soup.recipes import KeyedPlan

        if self.ingredients and all(isinstance(i, UpdatedModel) for i in self.ingredients):
            return updated_soup_state(self.ingredients, list(weights), self.keys, by_key)  # the base stays as it is
        plan = KeyedPlan(list(weights), by_key=by_key or {})
        return {k: to_torch(v) for k, v in mix_stream(plan, self.ingredients, self.keys)}

    def ingredient_splits(self, n: int, recipe: str) -> list[str]:
        """The split each of n ingredients' statistics (Grams, Fishers) come from: the tasting split for all, or the
        i-th of `given_splits` when the data were given once per ingredient, in order."""
        given = self.given_splits or [self.split]
        if len(given) == 1:
            return [given[0]] * n
        if len(given) == n:
            return list(given)
        raise LadleError(f"{recipe}: --data given {len(given)} times for {n} ingredients: give it once (the same data "
                         "for every ingredient) or once per ingredient, in the ingredients' order")

    def input_grams(self, i: int, examples: int, split: str | None = None) -> dict[str, tuple[torch.Tensor, bool]]:
        """Gram matrices XᵀX (float64, fan_in × fan_in) of the inputs of every linear layer (nn.Linear, GPT-2's
        Conv1D, 1×1 convolutions) of ingredient i on the first `examples` examples of `split` (default: the tasting
        split), by the layer's weight key, each with whether its weight is stored fan_in first (Conv1D) (tokens and
        pixels are rows of X; padding tokens included)."""
        from ladle.models.hf_names import CheckpointNamed

        model = self.evaluator.model
        names = model.to_file if isinstance(model, CheckpointNamed) else {}
        inner = model.model if isinstance(model, CheckpointNamed) else model
        grams: dict[str, torch.Tensor] = {}

        def hook(name):
            def record(module, inputs, output):
                x = inputs[0].detach().double()
                x = x.movedim(1, -1) if isinstance(module, torch.nn.Conv2d) else x  # channels last: rows are pixels
                x = x.reshape(-1, x.shape[-1])
                key = names.get(f"{name}.weight", f"{name}.weight")
                total = grams[key][0] if key in grams else 0
                grams[key] = (total + (x.T @ x).cpu(), type(module).__name__ == "Conv1D")
            return record

        hooks = [m.register_forward_hook(hook(name)) for name, m in inner.named_modules() if _is_linear(m)]
        data = self.evaluator.splits[split or self.split]
        part = data if len(data) <= examples else data.subset(range(examples), f"first {examples}")
        try:
            self.evaluator.prepare(self.ingredient_state(i), source=self.names[i])
            with torch.inference_mode():
                for x in self.evaluator.batches(part):
                    self.evaluator.forward(x, part)
        finally:
            for h in hooks:
                h.remove()
        return grams

    def fisher_diagonal(self, i: int, examples: int, split: str | None = None, seed: int = 0,
                        samples: int = 1) -> dict[str, torch.Tensor]:
        """The diagonal Fisher of ingredient i's parameters on the first `examples` examples of `split` (default: the
        tasting split), float64, averaged over the examples: for a classifier (or a multiple-choice item) exact over
        its classes, Σ_c p(c|x)·(∂ log p(c|x)/∂θ)², one backward pass per class; for a language model's text, the
        squared gradient of Σ_t log p(y_t|x_<t) with every next token y_t drawn from the model's own distribution
        (`samples` draws per text, seeded by `seed` and the example): its expectation is Σ_t E_y[(∂ log p(y|x_<t)/∂θ)²],
        the cross terms vanish because a score has mean zero."""
        data = self.evaluator.indexable(split or self.split)
        keys = set(self.parameter_keys())
        state = {k: v.to(self.device) for k, v in self.ingredient_state(i).items()}
        params = {k: v.detach().clone().requires_grad_(True) for k, v in state.items() if k in keys and v.is_floating_point()}
        fisher = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in params.items()}
        language = getattr(data, "task", None) == "lm"
        if language and samples < 1:
            raise LadleError(f"samples: must be at least 1, got {samples}")
        count = min(examples, len(data.y))

        def add(objective, weight: float, last: bool) -> None:
            grads = torch.autograd.grad(objective, list(params.values()), retain_graph=not last, allow_unused=True)
            for (k, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[k] += weight * g.detach().double().cpu() ** 2

        for start in range(0, count):
            x = data.take([start]) if hasattr(data, "take") else data.x[start : start + 1]
            if language:
                log_probs = self.next_token_log_probs({**state, **params}, x)  # (scored tokens, vocabulary)
                if not len(log_probs):
                    continue  # a one-token text predicts nothing: it adds no information
                draws = torch.Generator().manual_seed(seed * 1_000_003 + start)
                tokens = torch.multinomial(log_probs.detach().double().exp().cpu(), samples, replacement=True,
                                           generator=draws).to(log_probs.device)  # (scored tokens, samples)
                for s in range(samples):
                    add(log_probs.gather(1, tokens[:, s : s + 1]).sum(), 1.0 / samples, s + 1 == samples)
                continue
            log_probs = self.forward({**state, **params}, self.evaluator.normalise(x)).float().log_softmax(-1)[0]
            probs = log_probs.detach().exp()
            for c in range(log_probs.shape[0]):
                add(log_probs[c], float(probs[c]), c + 1 == log_probs.shape[0])
        return {k: v / count for k, v in fisher.items()}

    def next_token_log_probs(self, state: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        """A language model's log-distributions of the next token at every scored position of a one-text batch
        (rows: positions whose token the corpus scores; float32, with gradients into `state`)."""
        self._needs_head()
        model = self.evaluator.model.eval()
        batch = self.evaluator.normalise(batch)
        out = call_with_state(model, state, (), model_inputs(batch))
        logits = (out.logits if hasattr(out, "logits") else out)[0, :-1].float()
        scored = batch["target_mask"][0, 1:].to(logits.device).bool()
        return logits[scored].log_softmax(-1)

    def parameter_keys(self) -> list[str]:
        """The model's floating-point parameters: what a learned soup mixes with learned weights."""
        return [k for k, p in self.evaluator.model.named_parameters() if p.is_floating_point()]

    def _needs_head(self) -> None:
        if self.headless:
            raise LadleError(f"the ingredients carry no head ('{self.headless[0]}' …): their scores would read an "
                             "untrained one; use self-season, or fine-tune them back first", file=self.names[0])

    def forward(self, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits of the model with `state` in place of its tensors (gradients flow into `state`)."""
        self._needs_head()
        model = self.evaluator.model.eval()
        if isinstance(x, dict):  # a text batch: the model's inputs by name, its outputs read as the split reads them
            out = call_with_state(model, state, (), model_inputs(x))
            data = self.evaluator.splits[self.split]
            return data.readout(out.logits if hasattr(out, "logits") else out, x)
        out = call_with_state(model, state, (channels_last(x),))
        return out.logits if hasattr(out, "logits") else out

    def loss(self, out: torch.Tensor, y: torch.Tensor, temperature=1.0) -> torch.Tensor:
        """What a learned soup minimises on a batch of `forward` outputs: the cross-entropy of the tempered logits
        (classes, or a question's choices), or a corpus' token NLL (rows of [summed NLL, tokens]: no temperature)."""
        if getattr(self.evaluator.splits[self.split], "task", None) == "lm":
            return out[:, 0].sum() / out[:, 1].sum().clamp_min(1)
        return torch.nn.functional.cross_entropy(temperature * out, y)

    def embed(self, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Embeddings (the classifier's input) of the model with `state` in place of its tensors (with gradients)."""
        model = self.evaluator.model.eval()
        if isinstance(x, dict):  # a text batch goes in by name
            return embed(model, x, call=lambda inputs: call_with_state(model, state, (), model_inputs(inputs)))
        return embed(model, channels_last(x), call=lambda inputs: call_with_state(model, state, (inputs,)))

    def batches(self, batch_size: int, generator: torch.Generator):
        """One epoch of (inputs, labels) of the split in a seeded random order, on the device."""
        data = self.evaluator.indexable(self.split)
        order = torch.randperm(len(data.y), generator=generator)
        for start in range(0, len(data.y), batch_size):
            idx = order[start : start + batch_size]
            x = data.take(idx.numpy()) if hasattr(data, "take") else data.x[idx]  # text is tokenised per batch
            yield self.evaluator.normalise(x), data.y[idx].to(self.device)

    def _value(self, m: Metrics) -> float:
        return -m.nll if self.metric == "nll" else m.value

    def content_key(self, weights) -> str | None:
        """What the results store files logits under: the model and the (file sha256, weight) of every ingredient
        in the soup, in order (an ingredient alone is itself at weight 1, whatever the others); None without a
        store, or for in-memory ingredients (no file to hash)."""
        if self.evaluator.store is None or any(not ing.files for ing in self.ingredients):
            return None
        if self._file_keys is None:
            from ladle.io.hashing import file_hashes

            self._file_keys = [file_hashes(ing.files) for ing in self.ingredients]
        from ladle.results.store import evaluation_key

        return evaluation_key(self.evaluator.model_id, self.keys, list(zip(self._file_keys, weights)))

    def ingredient_metrics(self, i: int, split: str | None = None) -> Metrics:
        self._needs_head()
        split = split or self.split
        key = self.content_key([float(j == i) for j in range(len(self.ingredients))])
        state = None if self.evaluator.recall(self.names[i], split, key) else self.ingredient_state(i)
        return self.evaluator.score(self.names[i], state, split, first=state, key=key, kind="ingredient")

    def score_ingredient(self, i: int) -> float:
        return self._value(self.ingredient_metrics(i))

    def _soup_name(self, weights) -> str:
        return f"soup of {self._group}[" + ",".join(f"{w:.6g}" for w in weights) + "]"

    def soup_metrics(self, weights, split: str | None = None) -> Metrics:
        self._needs_head()
        name, split, key = self._soup_name(weights), split or self.split, self.content_key(weights)
        state = None if self.evaluator.recall(name, split, key) else self.soup_state(weights)
        first = self.ingredient_state(0) if self.evaluator.bn == "first" and state is not None else None
        return self.evaluator.score(name, state, split, first=first, key=key, kind="soup")

    def score_soup(self, weights, must_reach: float | None = None, strictly: bool = False) -> float | None:
        """The soup's score; with `must_reach` (accuracy only), None as soon as it is certain that the soup scores
        below it (or not above it, `strictly`): the same decision as a full evaluation, in fewer passes."""
        if must_reach is None or self.metric != "accuracy":
            return self._value(self.soup_metrics(weights))
        self._needs_head()
        n = len(self.evaluator.labels(self.split))
        needed = round(must_reach * n) + (1 if strictly else 0)  # accuracies are counts / n: exact
        name, key = self._soup_name(weights), self.content_key(weights)
        state = None if self.evaluator.recall(name, self.split, key) else self.soup_state(weights)
        first = self.ingredient_state(0) if self.evaluator.bn == "first" and state is not None else None
        reached, self.last_images = self.evaluator.reaches(name, state, self.split, needed, first=first, key=key)
        complete = reached or (name, self.split) in self.evaluator.cache  # it ran to the end: the score is known
        return self._value(self.soup_metrics(weights)) if complete else None

    def use_shots(self, shots: int, seed: int = 0) -> None:
        """Taste on `shots` labelled examples drawn (stratified, seeded) from the current split: test-time search."""
        from ladle.data import stratified_split

        data = self.evaluator.splits[self.split]
        if shots <= 0 or shots > len(data):
            raise LadleError(f"shots: need between 1 and {len(data)} examples, got {shots}")
        idx, _ = stratified_split(data.y.numpy(), [shots], seed)
        name = f"{self.split}-{shots}-shots"
        self.evaluator.add_split(name, data.subset(idx, name))
        self.split = name


def _is_linear(module: torch.nn.Module) -> bool:
    """A layer whose weight multiplies its input: nn.Linear, transformers' Conv1D, a 1×1 stride-1 convolution."""
    if isinstance(module, torch.nn.Linear):
        return True
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return True
    return isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1) \
        and module.groups == 1 and module.padding in ((0, 0), "valid")
