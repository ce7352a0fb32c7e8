"""`ladle train sweep`: fine-tune ingredients from one stock (resumable)."""

from __future__ import annotations

from ladle.cli.common import show_progress


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="cook ingredients")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    sweep = train_sub.add_parser("sweep", help="fine-tune N ingredients from one stock with random hyper-parameters (resumable)")
    sweep.add_argument("--model", required=True, metavar="SPEC")
    sweep.add_argument("--num-classes", dest="num_classes", type=int)
    sweep.add_argument("--data", required=True, metavar="SPEC", help="training source; its train split trains, heldout scores")
    sweep.add_argument("--runs", type=int, default=8)
    sweep.add_argument("--epochs", type=int, default=6)
    sweep.add_argument("--lp-steps", dest="lp_steps", type=int, default=10, help="linear-probe steps of the shared head (0: none)")
    sweep.add_argument("--image-size", dest="image_size", type=int, default=64)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--device", default=None)
    sweep.add_argument("--out", required=True, metavar="DIR")


def run(args) -> int:
    from pathlib import Path

    from ladle.data import load_data, parse_spec
    from ladle.evaluation.tasting import default_device
    from ladle.models import model_spec
    from ladle.training.finetune import sweep

    source = parse_spec(args.data)[0]
    train = load_data(f"{source}:train", image_size=args.image_size, seed=args.seed)
    heldout = load_data(f"{source}:heldout", image_size=args.image_size, seed=args.seed)
    spec = model_spec(args.model, args.num_classes or train.num_classes)
    records = sweep(spec, train, heldout, Path(args.out), runs=args.runs, epochs=args.epochs, seed=args.seed,
                    lp_steps=args.lp_steps, device=args.device or default_device(), progress=show_progress(args))
    for r in records:
        hp = r["hyperparameters"]
        print(f"{r['path']}: held-out {100 * r['heldout_accuracy']:.2f}%  lr {hp['lr']:g} wd {hp['weight_decay']:g} "
              f"ls {hp['label_smoothing']:g} shift {hp['shift']} seed {hp['seed']}")
    return 0
