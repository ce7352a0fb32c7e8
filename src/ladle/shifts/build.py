"""Build (or reuse) the corrupted copies of a data set from specs: what `ladle corrupt` calls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BuiltSuite:
    suite: str
    data: dict  # the clean data's source record
    seed: int
    folder: Path
    sets: dict  # (corruption, severity) -> ImageSet | StoredSet
    built: int
    reused: int
    damaged: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def listing(self) -> list[dict]:
        return [{"corruption": c, "severity": s, "images": len(part), "path": part.source["cache"]}
                for (c, s), part in self.sets.items()]


def build_suite(data: str, suite: str, out: str | Path, *, severities: str = "1-5", image_size: int = 64, seed: int = 0,
                executor=None, store=None, db=None, progress: bool = False, model: str | None = None) -> BuiltSuite:
    """Every (corruption, severity) set of `suite` for data spec `data` (default split test), cached in `out`;
    each set is recorded in the results store (`store`, or the file `db`) when one is given. Missing sets are built
    by the executor (default: local processes, one per core). Text is read through `model`'s tokenizer (an HF text
    folder), as the sets will be tasted."""
    from ladle.data import StreamSet, open_data, parse_spec
    from ladle.shifts.corruptions import CorruptionCache, corrupted_sets, parse_severities, parse_suite, resize_note

    from ladle.results.store import opened

    from ladle.errors import LadleError
    from ladle.shifts.corruptions import is_text_suite

    spec = parse_suite(suite, parse_severities(severities))
    source, split = parse_spec(data)
    preprocess = None
    if model is not None:
        from ladle.models import model_spec

        preprocess = model_spec(model).preprocess if is_text_suite(spec.suite) else None
    elif is_text_suite(spec.suite):
        raise LadleError(f"corruptions: {spec.suite} corrupts text read through a model's tokenizer: give --model "
                         "(an HF text folder)")
    clean = open_data(f"{source}:{split or 'test'}", image_size=image_size, preprocess=preprocess)
    if isinstance(clean, StreamSet):  # photos: decoded once into the preprocessed uint8 cache, corrupted from there
        clean = clean.cached(progress=progress)
    cache = CorruptionCache(Path(out))
    start = time.perf_counter()
    sets = corrupted_sets(clean, spec, seed=seed, cache=cache, progress=progress, executor=executor or "local")
    built = BuiltSuite(spec.suite, clean.source, seed, Path(out), sets, cache.misses, cache.hits, list(cache.damaged),
                       time.perf_counter() - start)
    note = resize_note(sets.values())
    if note:
        built.notes.append(note)
    with opened(store, db) as store:  # after the sets exist: bad input never leaves a store behind
        if store is not None:
            for (name, severity), part in sets.items():
                store.put_corrupted_set(clean_fingerprint=clean.source["fingerprint"], suite=spec.family, corruption=name,
                                        severity=severity, seed=seed, images=len(part), path=part.source["cache"],
                                        checksum=part.source["fingerprint"])
    return built

