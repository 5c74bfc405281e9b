"""Device selection: ``auto`` picks cuda, then mps, then cpu."""

import torch

from medxgan.errors import MedxganError


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedxganError(f"--device {name}: CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MedxganError("--device mps: MPS is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MedxganError(f"--device {name}: unknown device (use auto, cpu, cuda, cuda:N or mps)") from None
