"""Train a small zoo network on scikit-learn's handwritten digits: a user's model, end to end.

    python examples/train_digits.py ~/digits --checkpoint runs/best.pt     # ~30 s on 2 cores
    edgekit export mobilenet_v2 --weights runs/best.pt --width 0.35 --crop 64 \\
        --resize 64 --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 --int8 --calib ~/digits/train
    edgekit eval artifacts/mobilenet_v2_w0.35_r64 --data ~/digits/val

The 1,797 8x8 digits (shipped inside scikit-learn, no download) are upscaled to 64 px PNGs in an
ImageFolder layout (``train/zero/...``, ``val/nine/...``; every fifth image is for validation).
Training code of this kind indexes the classes by sorted folder name, as torchvision's ImageFolder
does, and saves a DDP-style checkpoint (``{"model": {"module.…": tensor}, "optimizer": …}``):
what edgekit must read. The script prints its own top-1 on ``val``, which ``edgekit eval`` must
reproduce for the float files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from edgekit.zoo import create_model

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIDE = 64
MEAN, STD = 0.5, 0.5


def write_folders(root: Path, side: int = SIDE) -> None:
    """The digits as ``root/{train,val}/<name>/<i>.png`` (grey, upscaled bicubically)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "val" if i % 5 == 0 else "train"
        folder = root / split / NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((side, side), Image.BICUBIC)
        pixels.convert("RGB").save(folder / f"{i:04d}.png")


def read_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """NCHW float tensors and labels, classes indexed by sorted folder name (ImageFolder's order)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.png")):
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
            images.append((rgb.transpose(2, 0, 1) - MEAN) / STD)
            labels.append(index)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def train(root: Path, epochs: int = 6, seed: int = 0, checkpoint: Path | None = None) -> dict[str, float]:
    """Train mobilenet_v2 (width 0.35) from scratch; save ``checkpoint`` (default
    ``root/checkpoint.pt``); return the val top-1."""
    torch.manual_seed(seed)
    x, y = read_folder(root / "train")
    model = create_model("mobilenet_v2", num_classes=len(NAMES), width=0.35)
    wrapped = nn.DataParallel(model)  # saves keys as module.* like DDP does
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=4e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=steps)
    wrapped.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            loss = nn.functional.cross_entropy(wrapped(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    torch.save(
        {"epoch": epochs, "model": wrapped.state_dict(), "optimizer": optimizer.state_dict()},
        root / "checkpoint.pt",
    )
    wrapped.eval()
    xv, yv = read_folder(root / "val")
    with torch.no_grad():
        top1 = float((wrapped(xv).argmax(1) == yv).float().mean()) * 100
    return {"val_top1": round(top1, 2), "val_images": len(xv), "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to write train/, val/ and checkpoint.pt into")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--checkpoint", type=Path, help="where to save it (default ROOT/checkpoint.pt)")
    args = parser.parse_args()
    write_folders(args.root)
    print(json.dumps(train(args.root, args.epochs, checkpoint=args.checkpoint)))


if __name__ == "__main__":
    main()
