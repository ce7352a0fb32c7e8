"""`ladle train sweep`: fine-tune ingredients from one stock, one executor task per run (resumable).
`ladle train ssl`: one self-supervised run (labels ignored) through the same sweep machinery."""

from __future__ import annotations

from ladle.cli.common import db_option, executor_option, show_progress


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="cook ingredients")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    sweep = train_sub.add_parser("sweep", help="fine-tune N ingredients from one stock with drawn hyper-parameters (resumable)")
    sweep.add_argument("--config", metavar="FILE.yaml",
                       help="the search space (fields it leaves out: the demo's regime, ladle/training/configs/demo.yaml)")
    sweep.add_argument("--model", metavar="SPEC", help="stock model (default efficientnet-lite0)")
    sweep.add_argument("--num-classes", dest="num_classes", type=int, help="default: the data's class count")
    sweep.add_argument("--data", metavar="SOURCE", help="its train split trains, its heldout split scores (default digits)")
    sweep.add_argument("--runs", type=int, help="ingredients (default 8)")
    sweep.add_argument("--epochs", type=int, help="epochs per run (default 6)")
    sweep.add_argument("--batch-size", dest="batch_size", type=int, help="default 32")
    sweep.add_argument("--lp-steps", dest="lp_steps", type=int, help="linear-probe steps of the shared head (0: none; default 10)")
    sweep.add_argument("--image-size", dest="image_size", type=int, help="default 64")
    sweep.add_argument("--seed", type=int, help="the sweep seed: data split, stock head, draws (default 0)")
    sweep.add_argument("--threads", type=int, help="torch threads per run: part of what fixes the bytes (default 1)")
    sweep.add_argument("--device", default=None)
    executor_option(sweep, "trains the runs")
    db_option(sweep, "each run gets an ingredient row; default: none")
    sweep.add_argument("--out", required=True, metavar="DIR")

    ssl = train_sub.add_parser("ssl", help="train one self-supervised ingredient (labels ignored): its encoder")
    ssl.add_argument("--objective", required=True, help="mocov3, mmcr, mae (ViT), masked (CNN), or package.module:Class")
    ssl.add_argument("--model", metavar="SPEC", help="stock model (default efficientnet-lite0)")
    ssl.add_argument("--data", metavar="SOURCE", help="its train split trains (labels unused); default digits")
    ssl.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    ssl.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    ssl.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    ssl.add_argument("--weight-decay", dest="weight_decay", type=float, default=0.05)
    ssl.add_argument("--optimiser", default="adamw")
    ssl.add_argument("--schedule", default="cosine")
    ssl.add_argument("--bn", default="frozen", help="BatchNorm policy: frozen (default) or train")
    ssl.add_argument("--set", dest="knobs", action="append", default=[], metavar="KNOB=VALUE",
                     help="an objective hyper-parameter, e.g. --set temperature=0.1 (repeatable)")
    ssl.add_argument("--image-size", dest="image_size", type=int, help="default 64")
    ssl.add_argument("--seed", type=int, help="default 0")
    ssl.add_argument("--threads", type=int, help="torch threads (default 1)")
    ssl.add_argument("--device", default=None)
    executor_option(ssl, "trains the run")
    db_option(ssl, "the run gets an ingredient row; default: none")
    ssl.add_argument("--out", required=True, metavar="DIR")


OVERRIDES = ("model", "num_classes", "data", "runs", "epochs", "batch_size", "lp_steps", "image_size", "seed", "threads")


def ssl_config(args) -> dict:
    """The one-run sweep that `ladle train ssl` stands for: no linear probe, a fixed step count."""
    import yaml

    from ladle.errors import LadleError

    config = {"objective": args.objective, "runs": 1, "lp_steps": 0, "steps": args.steps, "epochs": 1,
              "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
              "optimiser": args.optimiser, "schedule": args.schedule, "bn": args.bn}
    for item in args.knobs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LadleError(f"--set: expected KNOB=VALUE, got '{item}'")
        config[key.strip()] = yaml.safe_load(value)
    return config


def run(args) -> int:
    import contextlib
    from pathlib import Path

    from ladle.training import run_sweep

    config = args.config if args.train_command == "sweep" else ssl_config(args)
    overrides = {k: getattr(args, k, None) for k in OVERRIDES}
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
