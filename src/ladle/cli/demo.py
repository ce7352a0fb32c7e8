"""`ladle demo`: the model-soups study at laptop scale, on a real ImageNet-pretrained model."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a complete soup study on a real ImageNet-pretrained model (≤ 10 min on 2 cores)")
    p.add_argument("--out", default="ladle-demo", help="folder for the demo's files (default ladle-demo)")
    p.add_argument("--runs", type=int, default=8, help="ingredients to fine-tune (default 8)")
    p.add_argument("--seed", type=int, default=0, help="sweep seed (default 0)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster study (for smoke tests)")


def run(args) -> int:
    from ladle.studies.demo import run_demo

    return run_demo(Path(args.out), runs=args.runs, seed=args.seed, quick=args.quick)
