"""Tasting: accuracy, NLL and ECE of state dicts on fixed data, with nothing computed twice.

One model object is built once and state dicts are loaded into it; each split is normalised once and
kept as a tensor; logits are cached under a name (an ingredient's path, a soup's weights), so a
recipe that asks for a score never rebuilds data and never re-runs an ingredient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from ladle.progress import progress_bar

from ladle.data.sets import ImageSet, fingerprint, unit
from ladle.data.stream import StreamSet
from ladle.data.text import TextSet, check_labels, model_inputs
from ladle.errors import LadleError
from ladle.heap import steady_heap
from ladle.spec import BN_POLICIES
from ladle.models.specs import load_weights


@dataclass(frozen=True)
class Metrics:
    """Classifiers (and multiple choice): accuracy, NLL, ECE; a language model's corpus: NLL per token and
    perplexity (its accuracy and ECE are None: there is no class to get right)."""

    accuracy: float | None
    nll: float | None
    ece: float | None
    n: int
    perplexity: float | None = None
    score: float | None = None  # a user's --metric: the mean of its scores

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def value(self) -> float:
        """Higher is better: a user's score, accuracy, or minus the NLL where there is no accuracy (a corpus)."""
        if self.score is not None:
            return self.score
        return self.accuracy if self.accuracy is not None else -self.nll


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> Metrics:
    """Top-1 accuracy, mean negative log-likelihood and expected calibration error (equal-width bins)."""
    logits = logits.double()
    probs = logits.softmax(-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    nll = F.cross_entropy(logits, labels).item()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.double().mean().item() * abs(confidence[inside].mean().item() - correct[inside].mean().item())
    return Metrics(correct.mean().item(), nll, ece, len(labels))


def lm_metrics(rows: torch.Tensor) -> Metrics:
    """A corpus' NLL per predicted token (the sum over every text over the count) and its perplexity, from rows of
    [summed token NLL, tokens] per text."""
    rows = rows.double()
    tokens = rows[:, 1].sum().item()
    nll = rows[:, 0].sum().item() / tokens if tokens else math.nan
    return Metrics(None, nll, None, int(tokens), math.exp(nll) if nll == nll else math.nan)


def user_metric(spec: str):
    """`package.module:function` taking (model, batch) and giving a score per example or one for the batch."""
    import importlib

    module_name, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name) if name else None
    except (ImportError, AttributeError) as e:
        raise LadleError(f"metric: cannot import '{spec}': {e}") from None
    if not callable(fn):
        raise LadleError(f"metric: '{spec}' is not a function (package.module:function)")
    return fn


def metric_rows(fn, model: nn.Module, x, n: int) -> torch.Tensor:
    """A user metric's scores of a batch of `n` examples, one row each (a single batch score is given to each)."""
    out = torch.as_tensor(fn(model, x), dtype=torch.float64).detach().flatten()
    if out.numel() == 1:
        out = out.expand(n)
    if out.numel() != n:
        raise LadleError(f"metric: gave {out.numel()} scores for a batch of {n} examples (one per example, or one)")
    return out[:, None].float()


def metrics_of(data, rows: torch.Tensor, labels: torch.Tensor | None = None, custom: bool = False) -> Metrics:
    """The metrics of a split's rows, by what the split holds (labels: default the split's own); `custom`: rows of
    a user metric's scores."""
    if custom:
        return Metrics(None, None, None, len(rows), score=rows.double().mean().item() if len(rows) else math.nan)
    if getattr(data, "task", "classify") == "lm":
        return lm_metrics(rows)
    return metrics_from_logits(rows, data.y if labels is None else labels)


AUTOCAST = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --precision


def eval_batch_size(device, language_model: bool = False) -> int:
    """Examples per forward pass when none is given: 64 on a CPU (bench/eval.py, EfficientNet-Lite0 on 2 cores:
    1.3-1.6x the images/s of batch 256, 2.4-3.6x plain eager inference; smaller batches stay in cache), 256 on a GPU.
    A language model's logits are (batch, length, vocabulary): 8 texts on a CPU, 32 on a GPU (at 512 tokens and a
    128k vocabulary, 8 texts are 2 GB of float32 logits)."""
    cpu = torch.device(device).type == "cpu"
    if language_model:
        return 8 if cpu else 32
    return 64 if cpu else 256


def _predictions(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 classes exactly as metrics_from_logits takes them (argmax of the float64 softmax)."""
    return logits.double().softmax(-1).max(-1).indices


def ensemble_logits(logits: Iterable[torch.Tensor], mode: str = "probs") -> torch.Tensor:
    """Output ensemble: mean of probabilities (returned as log-probabilities) or mean of logits."""
    stack = torch.stack([l.double() for l in logits])
    if mode == "logits":
        return stack.mean(0)
    if mode == "probs":
        return stack.softmax(-1).mean(0).log()
    raise ValueError(f"ensemble mode must be 'probs' or 'logits', got {mode!r}")


def channels_last(x):
    """Image batches and conv nets in channels-last layout: measured here 1.3-1.9× faster on CPU (oneDNN), also
    the fast layout on CUDA. Tensors that are not images, text batches and modules keep their values exactly."""
    if isinstance(x, Mapping):
        return x
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def batchnorm_keys(model: nn.Module) -> set[str]:
    """State-dict keys of BatchNorm running statistics (what recalibration may change)."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            prefix = f"{name}." if name else ""
            keys.update(prefix + b for b, v in module.named_buffers(recurse=False) if v is not None)
    return keys


def call_model(model: nn.Module, x) -> torch.Tensor:
    """The model's logits on a batch: an image tensor, or a text batch (a dict) whose model inputs go in as keyword
    arguments; outputs with `.logits` (Hugging Face) give those."""
    out = model(**model_inputs(x)) if isinstance(x, Mapping) else model(x)
    return out.logits if hasattr(out, "logits") else out


def _inputs(batch):
    """The input tensor of a batch: a tensor, (x, y, …) or a dict with pixel_values / x / input / image."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        for k in ("pixel_values", "x", "input", "inputs", "image", "images"):
            if k in batch:
                return batch[k]
        raise LadleError(f"batch dict has no input tensor (keys: {', '.join(batch)})")
    return batch[0]


@torch.no_grad()
def update_bn(batches: Iterable, model: nn.Module, device: torch.device | str | None = None) -> None:
    """Recompute BatchNorm running statistics on data (like torch.optim.swa_utils.update_bn, dict batches too)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = {m: m.momentum for m in bns}
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    for batch in batches:
        x = _inputs(batch)
        model(x.to(device) if device is not None else x)
    for m in bns:
        m.momentum = momenta[m]
    model.train(was_training)


class Evaluator:
    """Scores state dicts on named splits; one model, preprocessed data, cached logits."""

    def __init__(self, model: nn.Module, splits: Mapping[str, ImageSet | StreamSet], *, mean=(0.5, 0.5, 0.5),
                 std=(0.5, 0.5, 0.5), device: str | torch.device = "cpu", batch_size: int | None = None,
                 bn: str = "average", bn_data: ImageSet | StreamSet | None = None, progress: bool = False, store=None,
                 model_id: str | None = None, precision: str = "fp32", workers: int | None = None, metric=None):
        if bn not in BN_POLICIES:
            raise LadleError(f"bn: must be one of {', '.join(BN_POLICIES)}, got '{bn}'")
        if bn == "recalibrate" and bn_data is None:
            raise LadleError("bn: 'recalibrate' needs data to recompute BatchNorm statistics on")
        if precision not in AUTOCAST:
            raise LadleError(f"precision: must be one of {', '.join(AUTOCAST)}, got '{precision}'")
        steady_heap()  # activations allocated per batch must not fragment the heap over a long pass
        self.device = torch.device(device)
        self.model = channels_last(model.to(self.device)).eval()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self.splits = dict(splits)
        for name, data in self.splits.items():
            if len(data) == 0:
                raise LadleError(f"data: split '{name}' is empty")
        language_model = any(getattr(d, "task", None) in ("lm", "choice") for d in self.splits.values())
        self.batch_size = batch_size or eval_batch_size(self.device, language_model)
        self.precision = precision
        self.workers = workers
        self.bn = bn
        self.bn_data = bn_data
        self.bn_keys = batchnorm_keys(self.model)
        self.cache: dict[tuple[str, str], torch.Tensor] = {}
        self.partial: dict[tuple[str, str], torch.Tensor] = {}  # logits of evaluations stopped early (reaches)
        self.progress = progress
        self.forward_passes = 0  # images pushed through the model: what caching saves
        self.store = store  # a ResultStore: logits found there are not recomputed, new ones are added
        self.model_id = model_id  # the model spec, part of the store key of what a Taster scores
        self.record: dict = {}  # what every stored row says it was computed with (the transform, the precision)
        self.metric = metric  # a user's (model, batch) -> scores function: rows are its scores, not logits

    @property
    def bn_key(self) -> str:
        """The BatchNorm policy as stored: recalibration depends on the data it recalibrates on."""
        if self.bn == "recalibrate":
            return f"recalibrate:{self.bn_data.source.get('fingerprint', '?')}"
        return self.bn

    def normalise(self, x):
        """uint8 or [0, 1] images, anywhere -> the model's input on the device (ToTensor + Normalize arithmetic);
        a text batch's tensors are moved to the device."""
        if isinstance(x, Mapping):
            return {k: v.to(self.device, non_blocking=True) for k, v in x.items()}
        x = unit(x.to(self.device, non_blocking=True))
        return channels_last((x - self.mean) / self.std)

    def batches(self, data: ImageSet | StreamSet):
        """Model inputs of a split, batch by batch in example order (streamed sets decode in workers)."""
        pin = self.device.type == "cuda"
        for batch in data.batches(self.batch_size, workers=self.workers, pin_memory=pin):
            yield self.normalise(batch)

    def forward(self, x, data=None) -> torch.Tensor:
        """Rows (float32, on the CPU) of a batch of model inputs, under autocast for bf16 / fp16: logits, or what a
        text split reads out of them (a corpus text's token NLL, a question's choice log-likelihoods)."""
        n = len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)
        with torch.autocast(self.device.type, dtype=AUTOCAST[self.precision], enabled=self.precision != "fp32"):
            if self.metric is not None:
                return metric_rows(self.metric, self.model, x, n).cpu()
            out = call_model(self.model, x)
        if isinstance(data, TextSet):
            out = data.readout(out, x)
        return out.float().cpu()

    def metrics(self, split: str, rows: torch.Tensor) -> Metrics:
        return metrics_of(self.splits[split], rows, custom=self.metric is not None)

    def visited_labels(self, split: str) -> torch.Tensor:
        """The labels in the order the split's batches visit its examples (text: shortest first)."""
        data = self.splits[split]
        order = getattr(data, "order", None)
        return data.y if order is None else data.y[torch.from_numpy(order)]

    def indexable(self, split: str) -> ImageSet:
        """The split with random access (a learned soup draws shuffled batches): a streamed split is decoded once
        into the preprocessed cache and read from there."""
        data = self.splits[split]
        if isinstance(data, StreamSet):
            data = self.splits[split] = data.cached(progress=self.progress)
        return data

    def inputs(self, split: str) -> torch.Tensor:
        """The whole split as model inputs in one tensor (small splits; large ones are read with `batches`)."""
        return torch.cat(list(self.batches(self.indexable(split))))

    def labels(self, split: str) -> torch.Tensor:
        return self.splits[split].y

    def add_split(self, name: str, data: ImageSet) -> None:
        self.splits[name] = data
        self.cache = {k: v for k, v in self.cache.items() if k[1] != name}
        self.partial = {k: v for k, v in self.partial.items() if k[1] != name}

    def prepare(self, state: Mapping[str, torch.Tensor], first: Mapping[str, torch.Tensor] | None = None,
                source: object = "soup") -> None:
        """Load a state into the model and apply the BatchNorm policy."""
        state = dict(state)
        if self.bn == "first" and first is not None:
            for k in self.bn_keys:
                if k in first:
                    state[k] = first[k]
        load_weights(self.model, state, source)
        if self.bn == "recalibrate":
            update_bn(self.batches(self.bn_data), self.model)
        self.model.eval()

    @torch.inference_mode()
    def run(self, split: str) -> torch.Tensor:
        """Logits of the model as currently loaded, on a split (uncached)."""
        data = self.splits[split]  # read batch by batch: a corrupted set or a cache is mapped from disk, photos stream
        out = []
        unit = "text" if isinstance(data, TextSet) else "img"
        bar = progress_bar(total=len(data), desc=f"eval {split}", unit=unit, enabled=self.progress)
        for x in self.batches(data):
            out.append(self.forward(x, data))
            bar.update(len(out[-1]))
        bar.close()
        self.forward_passes += len(data)
        return in_example_order(data, torch.cat(out))

    def logits(self, name: str, state: Mapping[str, torch.Tensor] | None, split: str,
               first: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of `state` on `split`, cached under `name` (state may be None when cached)."""
        if state is None and (name, split) not in self.cache:
            raise KeyError(f"no cached logits for {name} on {split}")
        return self.logits_many(name, state, [split], first)[split]

    def logits_many(self, name: str, state, splits: Iterable[str], first=None, key: str | None = None,
                    kind: str = "model") -> dict[str, torch.Tensor]:
        """Logits on several splits with one load (and one BN recalibration) of the state.

        With a store and a content `key` (a checkpoint's sha256, an in-memory soup's soup_key), logits stored
        for (key, split fingerprint, BN policy) are reused and new ones are written, one row per split."""
        splits = list(splits)
        todo = [s for s in splits if not self.recall(name, s, key)]
        if todo:
            if state is None:
                raise KeyError(f"no cached logits for {name}")
            self.prepare(state, first, name)
            for s in todo:
                self.cache[(name, s)] = self.run(s)
                if self.store is not None and key is not None:
                    self._put(key, name, s, kind)
        return {s: self.cache[(name, s)] for s in splits}

    @torch.inference_mode()
    def reaches(self, name: str, state, split: str, needed: int, first=None, key: str | None = None) -> tuple[bool, int]:
        """Whether `state` gets at least `needed` examples of `split` right, and how many images it took to know.

        Stops as soon as the answer is no: when the errors so far leave fewer right answers possible than
        `needed`, so a candidate that cannot win costs only the batches it takes to see that. The answer is that
        of a full evaluation (same predictions as metrics_from_logits); a complete pass is cached like `logits`."""
        n = len(self.labels(split))
        if self.recall(name, split, key):
            return int((_predictions(self.cache[(name, split)]) == self.labels(split)).sum()) >= needed, 0
        y = self.visited_labels(split)  # partial logits follow the batches' order
        known = self.partial.get((name, split))  # the first images of an evaluation stopped before
        if known is not None and int((_predictions(known) == y[: len(known)]).sum()) + n - len(known) < needed:
            return False, len(known)  # what it took to see it, back then
        self.prepare(state, first, name)
        out, correct, seen = [], 0, 0
        for x in self.batches(self.splits[split]):
            logits = self.forward(x, self.splits[split])
            out.append(logits)
            correct += int((_predictions(logits) == y[seen : seen + len(logits)]).sum())
            seen += len(logits)
            self.forward_passes += len(logits)
            if correct + (n - seen) < needed and seen < n:
                self.partial[(name, split)] = torch.cat(out)
                if self.store is not None and key is not None:  # kept as a partial row: its n says how far it got
                    m = metrics_from_logits(self.partial[(name, split)], y[:seen])
                    self.store.put_evaluation(key, self._fingerprint(split), self.bn_key, model_name=str(name),
                                              kind="partial", data_name=split, accuracy=m.accuracy, nll=m.nll,
                                              ece=m.ece, n=seen, logits=self.partial[(name, split)],
                                              extra=self.record or None)
                return False, seen
        self.partial.pop((name, split), None)
        self.cache[(name, split)] = in_example_order(self.splits[split], torch.cat(out))
        if self.store is not None and key is not None:
            self._put(key, name, split, "soup")
        return correct >= needed, seen

    def recall(self, name: str, split: str, key: str | None) -> bool:
        """Whether complete logits of `name` on `split` are at hand: cached here, or read once from the store (a
        stored evaluation that stopped early goes to `partial`, never taken for a complete one)."""
        if (name, split) in self.cache:
            return True
        if self.store is None or key is None or (name, split) in self.partial:
            return False
        found = self.store.logits(key, self._fingerprint(split), self.bn_key)
        if found is not None and len(found) <= len(self.splits[split]):
            (self.cache if len(found) == len(self.splits[split]) else self.partial)[(name, split)] = found
        return (name, split) in self.cache

    def _put(self, key: str, name: str, split: str, kind: str) -> None:
        m = self.metrics(split, self.cache[(name, split)])
        self.store.put_evaluation(key, self._fingerprint(split), self.bn_key, model_name=str(name), kind=kind,
                                  data_name=split, accuracy=_real(m.accuracy), nll=_real(m.nll), ece=_real(m.ece),
                                  n=m.n, logits=self.cache[(name, split)],
                                  extra=(self.record | ({"score": m.score} if m.score is not None else {})) or None)

    def _fingerprint(self, split: str) -> str:
        data = self.splits[split]
        return data.source.get("fingerprint") or fingerprint(data)

    def score(self, name: str, state, split: str, first=None, key: str | None = None, kind: str = "model") -> Metrics:
        if state is None and (name, split) not in self.cache and key is None:
            raise KeyError(f"no cached logits for {name} on {split}")
        return self.metrics(split, self.logits_many(name, state, [split], first, key=key, kind=kind)[split])

    def ensemble(self, names: list[str], split: str, mode: str = "probs") -> Metrics:
        if self.metric is not None:
            raise LadleError("metric: a user metric scores models, not an output ensemble")
        if getattr(self.splits[split], "task", "classify") == "lm":
            raise LadleError(f"data: no output ensemble of language models on a corpus ({split}): their rows are "
                             "token NLLs, not distributions")
        return metrics_from_logits(ensemble_logits([self.cache[(n, split)] for n in names], mode), self.labels(split))


def in_example_order(data, rows: torch.Tensor) -> torch.Tensor:
    """Rows computed in the order a split's batches visit it (text: shortest first) put back in example order."""
    order = getattr(data, "order", None)
    if order is None:
        return rows
    out = torch.empty_like(rows)
    out[torch.from_numpy(order)] = rows
    return out


def _real(value: float | None) -> float:
    return math.nan if value is None else value


def check_num_classes(model: nn.Module, data: ImageSet | StreamSet | TextSet, sample: torch.Tensor | None = None) -> None:
    """Fail early, in one line, if the model's outputs do not match the data's classes (`sample`: one model input;
    default: the first image of the data, unnormalised). A language model's corpus or choices have no classes."""
    if isinstance(data, TextSet) and data.task != "classify":
        return
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = next(iter(data.batches(1, workers=0))) if sample is None else sample
        x = {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else unit(x).to(device)
        out = call_model(model, x)
    if isinstance(data, TextSet):
        return check_labels(data, out.shape[-1])
    if out.shape[-1] < data.num_classes or (out.shape[-1] != data.num_classes and int(data.y.max()) >= out.shape[-1]):
        raise LadleError(f"model has {out.shape[-1]} outputs but the data has {data.num_classes} classes (--num-classes)")
