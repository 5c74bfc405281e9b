"""Shared helpers of the benchmark scripts: machine description, thread settings, medians, peak
memory, held-out test positives of a model run, and the JSON / markdown output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

import torch


def add_common_args(ap, repeats: int = 3) -> None:
    ap.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=repeats, help="timed repeats; medians are reported")
    ap.add_argument("--json", help="where to write the numbers (default: bench-<name>.json in the working directory)")


def setup(args) -> str:
    """Apply --threads, resolve --device; returns the device string."""
    from medxgan.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return str(resolve_device(args.device))


def machine(device: str) -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: str) -> None:
    """Wait for queued GPU work, so that wall-clock readings include it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children) in MiB."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20  # Linux: KiB, macOS: bytes


def test_positives(model: str, data: str, n: int | None):
    """(images [N,C,H,W] in [-1,1], names) of the first ``n`` positives of the run's test split
    (the split saved in the run, with the run's data settings)."""
    from medxgan.cli import _read_json, load_splits, run_split_file
    from medxgan.config import DataConfig, from_dict

    dcfg = from_dict(DataConfig, _read_json(Path(model) / "config.json", "run config").get("data", {}))
    splits = load_splits(data, dcfg, split_file=run_split_file(model, data, required=True),
                         progress=False)
    test = splits["test"]
    idx = torch.nonzero(test.labels == 1).flatten()[:n]
    sub = test.subset(idx.numpy())
    return sub.images, sub.names


def write_json(path, record: dict) -> None:
    from medxgan.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, default=float)
            f.write("\n")

    atomic_write(Path(path), write)
    print(f"\nnumbers: {path}")


def fmt(v, spec=".3f", none="—") -> str:
    return none if v is None else format(v, spec)


def markdown(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
