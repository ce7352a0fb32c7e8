"""The baseline of bench/data.py: what a user writes by hand to evaluate one timm checkpoint on an ImageFolder.

    .venv/bin/python bench/data_loop.py FOLDER CKPT [--workers 2] [--batch-size 64] [--model resnet18] [--num-classes 10]

torchvision's ImageFolder with timm's own eval transform for the model (resnet18 in timm 1.0: resize 235, centre
crop 224, bicubic, ImageNet mean/std), a DataLoader with `--workers` processes, the model loaded from a safetensors file,
inference mode, logits collected, accuracy printed. Nothing else, so its wall time and memory are the bar.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an ImageFolder (e.g. ROOT/val)")
    parser.add_argument("ckpt", help="a safetensors state dict of the model")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    start = time.perf_counter()
    model = timm.create_model(args.model, num_classes=args.num_classes)
    model.load_state_dict(load_file(args.ckpt))
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    dataset = ImageFolder(args.folder, transform=timm.data.create_transform(**config))
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False)
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in loader:
            logits.append(model(x))
            labels.append(y)
    logits, labels = torch.cat(logits), torch.cat(labels)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    print(f"{args.model} on {len(dataset)} images of {args.folder} ({config['input_size'][1]} px, "
          f"crop_pct {config['crop_pct']}): accuracy {100 * accuracy:.2f} % in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
