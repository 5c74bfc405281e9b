"""Write the results of ``medxgan evaluate``: ``metrics.json``, ``RESULTS.md`` and PNG figures.

``metrics.json`` layout (keys are stable; see docs)::

    {"meta": {...command, model, seed, n_images, methods, timings...},
     "metrics": {"generated_accuracy": {"mean", "std", "ci95", "n"}, "counterfactual_drop.lig": {...}, ...},
     "experiments": {"fidelity": {"title", "keys": [...], "notes": [...], "figures": [...], "wall_s"}, ...}}

``metrics`` is the union of every experiment's metrics (their keys do not overlap: experiments
after the paper's tables prefix theirs with their name, e.g. ``sanity.gradcam``); a quantity
with spread is a ``{mean, std, ci95, n}`` object. Every key is listed in docs/EVALUATION.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from medxgan.checkpoint import atomic_write
from medxgan.evaluate.registry import ExperimentResult, Table, get_experiment
from medxgan.report import _atomic_bytes, _atomic_json

METRICS_FILE = "metrics.json"
RESULTS_FILE = "RESULTS.md"


def _is_summary(value) -> bool:
    return isinstance(value, dict) and "mean" in value and "n" in value


def _number(x, digits: int = 3) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.1f}"


def format_cell(value) -> str:
    """A table cell: ``{mean, std, ci95}`` -> ``0.970 ± 0.030 [0.950, 0.990]``, numbers with 3
    decimals, anything else as text (``|`` escaped for markdown)."""
    if _is_summary(value):
        text = f"{_number(value['mean'])} ± {_number(value['std'])}"
        ci = value.get("ci95")
        if ci and value.get("n", 0) > 1 and not any(math.isnan(float(c)) for c in ci):
            text += f" [{_number(ci[0])}, {_number(ci[1])}]"
        return text
    if isinstance(value, (int, float)):
        return _number(value)
    return str(value).replace("|", "\\|")


def _markdown_table(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(format_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(format_cell(c) for c in row) + " |")
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def write_evaluation(out_dir, results: dict[str, ExperimentResult], meta: dict) -> Path:
    """Write ``metrics.json``, ``RESULTS.md`` and every figure (``<stem>.png``) into ``out_dir``.

    Args:
        out_dir: the evaluation directory (created if missing).
        results: experiment name -> its result, written in registry order.
        meta: provenance (command, model run, data, seed, n_images, methods, ``wall_s`` per
            experiment under ``meta["timings"]``, ...), stored verbatim in ``metrics.json``.

    Returns:
        The path of ``RESULTS.md``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    experiments = sorted(results, key=lambda name: (get_experiment(name).order, name))
    timings = meta.get("timings", {})
    merged, index = {}, {}
    for name in experiments:
        result = results[name]
        merged.update(result.metrics)
        figure_files = []
        for stem, fig in result.figures.items():
            # atomic like every other file; a closed figure still saves: incremental writes redo it
            atomic_write(out / f"{stem}.png", lambda tmp, fig=fig: fig.savefig(tmp, dpi=120, format="png"))
            plt.close(fig)
            figure_files.append(f"{stem}.png")
        index[name] = {"title": get_experiment(name).title, "keys": list(result.metrics), "notes": list(result.notes),
                       "figures": figure_files, "wall_s": timings.get(name)}
    _atomic_json(out / METRICS_FILE, {"meta": meta, "metrics": merged, "experiments": index})  # strict JSON: NaN -> null

    lines = ["# medXGAN evaluation", ""]
    for key, label in (("command", "Command"), ("model", "Model run"), ("data", "Data"), ("seed", "Seed"),
                       ("n_images", "Test positives explained (at most)"), ("methods", "Methods"),
                       ("repeats", "Repeats"), ("quick", "Quick mode"), ("device", "Device")):
        if key in meta:
            value = ", ".join(map(str, meta[key])) if isinstance(meta[key], (list, tuple)) else meta[key]
            lines.append(f"- {label}: `{value}`" if key == "command" else f"- {label}: {value}")
    lines += ["", "Spread: mean ± std over images (or over repeats where the protocol repeats), "
              "[95 % percentile-bootstrap CI of the mean]. Every number was computed on the held-out test split.", ""]
    for name in experiments:
        result, info = results[name], index[name]
        wall = f" ({info['wall_s']:.0f} s)" if isinstance(info["wall_s"], (int, float)) else ""
        lines += [f"## {info['title']}", "", f"Experiment `{name}`{wall}.", ""]
        for table in result.tables:
            lines += [_markdown_table(table), ""]
        for note in result.notes:
            lines.append(f"- {note}")
        if result.notes:
            lines.append("")
        for png in info["figures"]:
            lines += [f"![{png[:-4]}]({png})", ""]
    results_md = out / RESULTS_FILE
    _atomic_bytes(results_md, "\n".join(lines).encode("utf-8"))
    return results_md


__all__ = ["METRICS_FILE", "RESULTS_FILE", "format_cell", "write_evaluation"]
