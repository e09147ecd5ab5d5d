"""PyTorch side of ``bench_training.py``: a worker process run by the PyTorch environment's Python.

PyTorch is never a dependency of ternref; this file imports only torch and numpy, so it runs in a
separate virtual environment. The benchmark starts it once and talks to it over stdin/stdout, one
JSON object per line, so that it can interleave ternref's and PyTorch's timed steps (a change of
machine load then hits both)::

    {"cmd": "setup", "model": "lenet5"|"mlp", "data": "x.npz", "batch": 128, "threads": 2,
     "in_features": 64}              -> {"ok": true, "version": ..., "threads": ...}
    {"cmd": "run", "steps": 50}      -> {"seconds": 1.23}
    {"cmd": "quit"}

``run`` trains ``steps`` steps (Adam 1e-3, cross-entropy), continuing through shuffled epochs of
the training set (``numpy.random.default_rng(0).permutation`` per epoch, batches by fancy
indexing as ternref's loader does), and reports the wall time of those steps only.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from torch import nn


def lenet5() -> nn.Module:
    """ternref.nn.lenet5: conv/linear layers before BatchNorm have no bias."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1600, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def mlp(in_features: int) -> nn.Module:
    """ternref.recipes.build_model("mlp"): Flatten -> 256 -> ReLU -> 256 -> ReLU -> 10."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


class Trainer:
    def __init__(self, model: str, data: str, batch: int, in_features: int):
        torch.manual_seed(0)
        self.model = lenet5() if model == "lenet5" else mlp(in_features)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = nn.CrossEntropyLoss()
        with np.load(data) as f:
            self.x = torch.from_numpy(f["x"])
            self.y = torch.from_numpy(f["y"].astype(np.int64))
        self.batch = batch
        self.rng = np.random.default_rng(0)
        self._batches = self._stream()

    def _stream(self):
        n = len(self.x)
        while True:
            order = torch.from_numpy(self.rng.permutation(n))
            for i in range(0, n, self.batch):
                yield order[i : i + self.batch]

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            idx = next(self._batches)
            xb, yb = self.x[idx], self.y[idx]
            self.opt.zero_grad()
            loss = self.loss(self.model(xb), yb)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - start


def main() -> int:
    trainer = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "setup":
            torch.set_num_threads(int(msg["threads"]))
            trainer = Trainer(msg["model"], msg["data"], int(msg["batch"]), msg["in_features"])
            trainer.run(3)  # warm-up: first-call allocations and kernel selection
            reply = {"ok": True, "version": torch.__version__, "threads": torch.get_num_threads()}
        elif msg["cmd"] == "run":
            reply = {"seconds": trainer.run(int(msg["steps"]))}
        else:
            reply = {"error": f"unknown command {msg['cmd']!r}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
