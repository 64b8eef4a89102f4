#!/usr/bin/env python3
"""The worked example of "Measure a PyTorch model": train a small nn.Sequential on
Fashion-MNIST in PyTorch, then convert and measure it with scripts/from_torch.py.

    python3 scripts/torch_fashion_mnist.py [--data /usr/share/datasets/fashion-mnist] \
        [--out results/byom/fashion-mnist] [--epochs 1] [--probe 512] [--train-size N]

Writes OUT/state_dict.pt, OUT/probe_x.pt, OUT/probe_labels.pt,
then from_torch.py's arch.toml, weights.safetensors, probe.safetensors, outputs.json and
measure.json. Needs torch and numpy; the data are Debian's dataset-fashion-mnist files.
"""

import argparse
import gzip
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn


class Residual(nn.Sequential):
    """x + block(x): the residual block from_torch.py maps to `{ op = "residual" }`."""

    def forward(self, x):
        return x + super().forward(x)


def make_model():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Residual(nn.Conv2d(16, 16, 3, padding=1), nn.Tanh()),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 14 * 14, 10),
    )


# from_torch.py imports the model as `torch_fashion_mnist:model`.
model = make_model()


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="results/byom/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--probe", type=int, default=512)
    ap.add_argument("--train-size", type=int, default=None, help="train on the first N samples only (a smoke test)")
    ap.add_argument("--noisegeom", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)

    def load(split):
        x = idx(os.path.join(args.data, f"{split}-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
        y = idx(os.path.join(args.data, f"{split}-labels-idx1-ubyte.gz")).astype(np.int64)
        return torch.from_numpy((x - 0.2860) / 0.3530).unsqueeze(1), torch.from_numpy(y)

    xtr, ytr = load("train")
    if args.train_size is not None:
        xtr, ytr = xtr[: args.train_size], ytr[: args.train_size]
    xte, yte = load("t10k")
    net = make_model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            b = perm[i : i + 128]
            loss = nn.functional.cross_entropy(net(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = sum((net(xte[i : i + 1000]).argmax(1) == yte[i : i + 1000]).sum().item() for i in range(0, len(xte), 1000)) / len(xte)
    print(f"trained {args.epochs} epoch(s) in {time.time() - start:.0f} s: test accuracy {acc:.4f}")
    g = torch.Generator().manual_seed(1)
    pick = torch.randperm(len(xtr), generator=g)[: args.probe]
    paths = {k: os.path.join(args.out, f"{k}.pt") for k in ["state_dict", "probe_x", "probe_labels"]}
    torch.save(net.state_dict(), paths["state_dict"])
    torch.save(xtr[pick].clone(), paths["probe_x"])
    torch.save(ytr[pick].clone(), paths["probe_labels"])
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "from_torch.py"), "--model", "torch_fashion_mnist:model",
           "--state-dict", paths["state_dict"], "--inputs", paths["probe_x"], "--labels", paths["probe_labels"],
           "--out", args.out]
    if args.noisegeom:
        cmd += ["--noisegeom", args.noisegeom]
    cmd += ["--", "--k", "10"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
