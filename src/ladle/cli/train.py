"""`ladle train sweep`: fine-tune ingredients from one stock, one executor task per run (resumable)."""

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


OVERRIDES = ("model", "num_classes", "data", "runs", "epochs", "batch_size", "lp_steps", "image_size", "seed", "threads")


def run(args) -> int:
    import contextlib
    from pathlib import Path

    from ladle.training import run_sweep

    overrides = {k: getattr(args, k) for k in OVERRIDES}
    with contextlib.ExitStack() as stack:
        executor = store = None
        if args.executor:
            from ladle.execution import make_executor

            executor = make_executor(args.executor)
            stack.callback(executor.close)
        if args.db:
            from ladle.results.store import ResultStore

            store = stack.enter_context(ResultStore(Path(args.db)))
        records = run_sweep(args.config, Path(args.out), overrides=overrides, executor=executor, store=store,
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
    return (f"{record['path']}: held-out {100 * record['heldout_accuracy']:.2f}%  lr {hp['lr']:g} wd {hp['weight_decay']:g}"
            f"{knobs} seed {hp['seed']}{extra}")
