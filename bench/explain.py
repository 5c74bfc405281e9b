"""End-to-end explanation speed and memory: `medxgan explain` over N images, for several N.

    python bench/explain.py --model RUN --data /work/shared/data/br35h --sizes 50,200,1000 [--device cpu] [--threads 2] [--repeats 1]

Each measurement runs ``medxgan explain`` (inversion + every default map + writing the PNG / GIF /
npz / JSON files and the report) in a fresh child process over the first N images of the
positive class folder of ``--data`` (the streaming file path: images decoded batch by batch), and
records its wall time and its peak resident memory (``ru_maxrss`` of that process). Memory flat
in N means the run holds one batch, not the job. Per-image time is the command's wall time over
N (model loading included, so it falls slightly with N). ``--explain-args`` passes further
options (e.g. ``--explain-args=--encoder`` or ``--explain-args="--steps 200 --restarts 2"``: with ``=``, since the value starts with a dash) to every run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as B  # noqa: E402


def child(argv: list[str]) -> None:
    """Run `medxgan explain` in this process; print {seconds, peak_rss_mb, rc} as JSON."""
    import torch

    from medxgan.cli import main as medxgan_main

    threads = argv.pop(0)
    if threads != "default":
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    rc = medxgan_main(argv)
    print(json.dumps({"rc": rc, "seconds": time.perf_counter() - start, "peak_rss_mb": B.peak_rss_mb(),
                      "threads": torch.get_num_threads()}))


def positive_folder(data: Path, model: str) -> Path:
    """The positive class folder named in the run's config (e.g. br35h/yes)."""
    from medxgan.cli import _read_json

    positive = _read_json(Path(model) / "config.json", "run config").get("data", {}).get("positive", "positive")
    folder = data / positive
    if not folder.is_dir():
        raise SystemExit(f"{folder}: positive class folder not found")
    return folder


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="data folder; its positive class folder is explained")
    ap.add_argument("--sizes", default="50,200,1000", help="comma-separated numbers of images")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--explain-args", default="", help="extra `medxgan explain` options, one string (write --explain-args=--encoder: the value starts with a dash)")
    ap.add_argument("--keep", help="keep the reports under this folder (default: a temporary folder, removed)")
    B.add_common_args(ap, repeats=1)
    args = ap.parse_args()
    device = B.setup(args)
    folder = positive_folder(Path(args.data), args.model)
    available = sum(1 for p in folder.iterdir() if p.is_file())
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if max(sizes) > available:
        raise SystemExit(f"{folder} holds {available} files, fewer than --sizes asks for ({max(sizes)})")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-explain-"))
    results = []
    for n in sizes:
        runs = []
        for r in range(max(1, args.repeats)):
            out = work / f"n{n}-r{r}"
            cmd = [sys.executable, __file__, "--child", str(args.threads or "default"), "explain", str(folder),
                   "--model", args.model, "--max-images", str(n), "--out", str(out), "--batch-size", str(args.batch_size),
                   "--device", device, "--no-progress", *shlex.split(args.explain_args)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"explain over {n} images failed:\n{proc.stderr[-2000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if not args.keep:
                import shutil

                shutil.rmtree(out, ignore_errors=True)
            print(f"N={n} repeat {r + 1}: {runs[-1]['seconds']:.1f} s, peak RSS {runs[-1]['peak_rss_mb']:.0f} MiB", file=sys.stderr)
        seconds = B.median([x["seconds"] for x in runs])
        results.append({"n_images": n, "seconds": seconds, "seconds_per_image": seconds / n,
                        "peak_rss_mb": B.median([x["peak_rss_mb"] for x in runs]), "runs": runs})
    if not args.keep:
        work.rmdir()
    info = B.machine(device)
    info["threads"] = results[0]["runs"][0]["threads"]
    rows = [[r["n_images"], B.fmt(r["seconds"], ".1f"), B.fmt(r["seconds_per_image"], ".2f"), B.fmt(r["peak_rss_mb"], ".0f")]
            for r in results]
    print(B.markdown(["images", "wall time (s)", "s / image", "peak RSS (MiB)"], rows))
    print(f"\n`medxgan explain {folder} --batch-size {args.batch_size} {args.explain_args}`".rstrip() +
          f" (default methods and inversion unless given); {info['cores']} cores, {info['threads']} threads, "
          f"torch {info['torch']}, {device}; medians of {args.repeats} run(s)")
    B.write_json(args.json or "bench-explain.json", {"benchmark": "explain", "command": " ".join(sys.argv), "machine": info,
                                                     "results": results, "settings": vars(args)})


if __name__ == "__main__":
    main()
