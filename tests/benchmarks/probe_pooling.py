"""Linear probes on frozen ImageNet features: which pooling of which stages carries each attribute.

    .venv/bin/python -m tests.benchmarks.probe_pooling [--data ../shared/data/fashion-products] [--epochs 30]

Runs the ImageNet-pretrained backbone (EfficientNet-Lite0 by default) once over the train and validation
splits (each image and its mirror image), keeps its last feature map and the outputs of the tapped stages,
then trains one linear head per group on the train split for each pooling variant and prints validation
top-1 side by side:

- `last`: the backbone's own global average of its last stage (what a plain classifier head sees);
- `last+taps`: plus the plain average of each tapped stage's output;
- `last+taps(fg)`: plus the average over non-background pixels (`learner.model.classifier.masked_average`).

This is how `--tap-stage` and `--tap-pooling foreground` were chosen (`shelfsight train`). Only the train and
validation splits are read: choosing a recipe never looks at test. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("gender", "articleType", "baseColour", "usage")
VARIANTS = ("last", "last+taps", "last+taps(fg)")


def extract(data_dir: Path, backbone: str, taps: tuple[int, ...]) -> dict[str, dict[str, object]]:
    """Per split: pooled last-stage features and plain / foreground-pooled tap features, for image and mirror."""
    from learner.datasets.images import ImageDataset
    from learner.datasets.labelled import SplitRule, load_labelled_set
    from learner.inference.imaging import normalize
    from learner.model.classifier import AttributeClassifier, foreground_mask, masked_average
    from learner.model.taxonomy import load_taxonomy

    taxonomy = load_taxonomy("fashion-products")
    data = load_labelled_set(data_dir, taxonomy)
    model = AttributeClassifier(taxonomy, backbone, pretrained=True, tap_stages=taps).eval()
    pre = model.preprocessing
    out: dict[str, dict[str, object]] = {}
    for split in ("train", "val"):
        ds = ImageDataset(data.split(SplitRule(), split), taxonomy, pre)
        views: dict[str, list[torch.Tensor]] = {"last": [], "taps": [], "taps_fg": []}
        for flip in (False, True):
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in views}
            for start in tqdm(range(0, len(ds), 64), desc=f"{split}{' mirrored' if flip else ''}", leave=False):
                x = torch.stack([ds.image(i) for i in range(start, min(start + 64, len(ds)))])
                x = normalize(x.flip(-1) if flip else x, pre)
                with torch.inference_mode():
                    pooled, maps = model.backbone_and_stage_maps(x)
                    mask = foreground_mask(x, pre)
                parts["last"].append(pooled)
                parts["taps"].append(torch.cat([m.mean(dim=(2, 3)) for m in maps], 1))
                parts["taps_fg"].append(torch.cat([masked_average(m, mask) for m in maps], 1))
            for k in views:
                views[k].append(torch.cat(parts[k]))
        out[split] = {k: torch.stack(v, 1) for k, v in views.items()}  # N x 2 views x C
        out[split]["targets"] = ds.targets
    return out


def features(split: dict[str, object], variant: str, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    parts = [split["last"][idx, view]]  # type: ignore[index]
    if variant == "last+taps":
        parts.append(split["taps"][idx, view])  # type: ignore[index]
    elif variant == "last+taps(fg)":
        parts.append(split["taps_fg"][idx, view])  # type: ignore[index]
    return torch.cat(parts, 1)


def probe(feats: dict[str, dict[str, object]], variant: str, group: str, epochs: int, seed: int) -> float:
    """Validation top-1 of a linear head (dropout 0.2, AdamW, one-cycle, label smoothing 0.1) on one group."""
    train, val = feats["train"], feats["val"]
    y = train["targets"][group]  # type: ignore[index]
    keep = (y >= 0).nonzero().squeeze(1)
    classes = int(max(train["targets"][group].max(), val["targets"][group].max())) + 1  # type: ignore[index]
    dim = features(train, variant, keep[:1], torch.zeros(1, dtype=torch.long)).shape[1]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(dim, classes))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=epochs * math.ceil(len(keep) / 64))
    for _ in range(epochs):
        head.train()
        order = keep[torch.randperm(len(keep), generator=gen)]
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            view = torch.randint(0, 2, (len(idx),), generator=gen)  # the image or its mirror
            loss = F.cross_entropy(head(features(train, variant, idx, view)), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    yv = val["targets"][group]  # type: ignore[index]
    idx = (yv >= 0).nonzero().squeeze(1)
    with torch.no_grad():
        pred = head(features(val, variant, idx, torch.zeros(len(idx), dtype=torch.long))).argmax(-1)
    return float((pred == yv[idx]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--tap-stage", type=int, action="append", dest="taps", help="default: 3 and 5")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    taps = tuple(args.taps or (3, 5))

    started = time.time()
    feats = extract(args.data, args.backbone, taps)
    print(f"features: {args.backbone}, taps {taps}, {time.time() - started:.0f} s")
    print("validation top-1 of linear probes | " + " ".join(f"{g:>11}" for g in GROUPS))
    for variant in VARIANTS:
        row = [probe(feats, variant, g, args.epochs, args.seed) for g in tqdm(GROUPS, desc=variant, leave=False)]
        print(f"{variant:<33} | " + " ".join(f"{v:>11.3f}" for v in row), flush=True)
    print(f"wall {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
