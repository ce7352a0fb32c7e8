"""`ladle train sweep`: fine-tune ingredients from one stock, one executor task per run (resumable); a config that
names a Hugging Face text folder (text-sweep.yaml: MiniLM on Rotten Tomatoes) fine-tunes text classifiers.
`ladle train ssl`: one self-supervised run (labels ignored) through the same sweep machinery."""

from __future__ import annotations

from ladle.cli.common import db_option, executor_option, show_progress


# `ladle train ssl` is a one-run sweep with these defaults (no linear probe: nothing reads a label)
SSL_DEFAULTS = {"runs": 1, "lp_steps": 0, "steps": 200, "epochs": 1, "batch_size": 32, "lr": 2e-4,
                "weight_decay": 0.05, "optimiser": "adamw", "schedule": "cosine", "bn": "frozen"}
SSL_SKIP = ("runs", "lp_steps", "lp_lr", "epochs")  # fixed by what an ssl run is


def add_parser(sub) -> None:
    from ladle.cli.common import add_flags
    from ladle.config import SWEEP_FIELDS

    train = sub.add_parser("train", help="cook ingredients")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    sweep = train_sub.add_parser("sweep", help="fine-tune N ingredients from one stock with drawn hyper-parameters (resumable)")
    sweep.add_argument("--config", metavar="FILE.yaml",
                       help="the search space (fields it leaves out: the demo's regime, ladle/training/configs/demo.yaml; "
                            "text-sweep.yaml, or any config naming a Hugging Face text folder: text classifiers, whose "
                            "own fields max_length, warmup, label_smoothing, train_examples, heldout_examples are set "
                            "with --set); the flags below override it")
    add_flags(sweep, SWEEP_FIELDS)
    sweep.add_argument("--device", default=None)
    executor_option(sweep, "trains the runs")
    db_option(sweep, "each run gets an ingredient row; default: none")
    sweep.add_argument("--out", required=True, metavar="DIR")

    ssl = train_sub.add_parser("ssl", help="train one self-supervised ingredient (labels ignored): its encoder")
    add_flags(ssl, ssl_fields(), skip=SSL_SKIP)
    ssl.add_argument("--device", default=None)
    executor_option(ssl, "trains the run")
    db_option(ssl, "the run gets an ingredient row; default: none")
    ssl.add_argument("--out", required=True, metavar="DIR")


def ssl_fields() -> list:
    """The sweep's fields with an ssl run's defaults; the objective is required."""
    from dataclasses import replace

    from ladle.config import SWEEP_FIELDS
    from ladle.soup.schema import REQUIRED

    defaults = SSL_DEFAULTS | {"objective": REQUIRED}
    return [replace(f, default=defaults[f.name]) if f.name in defaults else f for f in SWEEP_FIELDS]


def ssl_config(args) -> dict:
    """The one-run sweep that `ladle train ssl` stands for: a fixed step count, no linear probe."""
    from ladle.errors import LadleError

    if args.objective is None:
        raise LadleError("train ssl: --objective is required (mocov3, mmcr, mae, masked, or package.module:Class)")
    return dict(SSL_DEFAULTS)


def run(args) -> int:
    import contextlib
    from pathlib import Path

    from ladle.training import load_config, run_sweep

    from ladle.cli.common import overrides_from
    from ladle.config import SWEEP_FIELDS

    overrides = overrides_from(args, SWEEP_FIELDS)
    if args.train_command == "sweep":
        config = args.config  # an image sweep's, or a text sweep's (run_sweep tells them apart)
    else:
        config, overrides = load_config(ssl_config(args), overrides), None  # an image sweep's, whatever the model
    with contextlib.ExitStack() as stack:
        executor = store = None
        if args.executor:
            from ladle.execution import make_executor

            executor = make_executor(args.executor)
            stack.callback(executor.close)
        if args.db:
            from ladle.results.store import ResultStore

            store = stack.enter_context(ResultStore(Path(args.db)))
        records = run_sweep(config, Path(args.out), overrides=overrides, executor=executor, store=store,
                            device=args.device, progress=show_progress(args))
    for r in records:
        print(describe(r))
    return 0


def describe(record: dict) -> str:
    """One line per ingredient: where, held-out accuracy, what it was drawn with (parts only when not the default)."""
    hp = record["hyperparameters"]
    if record.get("kind") == "text":
        return (f"{record['path']}: held-out {100 * record['heldout_accuracy']:.2f}%  lr {hp['lr']:g} "
                f"wd {hp['weight_decay']:g} epochs {hp['epochs']} max-length {hp['max_length']} "
                f"ls {hp['label_smoothing']:g} seed {hp['seed']}")
    show = {"label_smoothing": "ls"}
    knobs = "".join(f" {show.get(k, k)} {v:g}" if isinstance(v, float) else f" {show.get(k, k)} {v}" for k, v in hp.items()
                    if k not in ("lr", "weight_decay", "epochs", "batch_size", "seed"))
    parts = [record.get(k, v) for k, v in (("objective", "cross_entropy"), ("optimiser", "adamw"),
                                           ("schedule", "one_cycle"), ("bn", "frozen"))]
    extra = "" if parts == ["cross_entropy", "adamw", "one_cycle", "frozen"] else f"  [{', '.join(parts[:3])}, bn {parts[3]}]"
    readout = " (kNN)" if record.get("encoder_only") else ""
    score = "n/a (unlabelled data)" if record["heldout_accuracy"] is None else f"{100 * record['heldout_accuracy']:.2f}%"
    return (f"{record['path']}: held-out{readout} {score}  lr {hp['lr']:g} wd {hp['weight_decay']:g}"
            f"{knobs} seed {hp['seed']}{extra}")
