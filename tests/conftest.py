import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def run_cli(*args, cwd=None):
    """Run `python -m medxgan` as a user would; returns (rc, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "medxgan", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("medxgan: error:"), err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    rc, so, se = run_cli("demo", "--quick", "--out", out, "--no-progress", "--device", "cpu")
    assert rc == 0, se
    return out, so


