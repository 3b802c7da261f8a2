"""Task generators (sinusoid, nonlinear RLC, HBV hydrology), the CAMELS loader, and batching helpers."""
from .base import Task, TaskFamily, make_tasks, sample_supports, stack_pool, task_rng
from .camels import CamelsFamily, load_camels_basin
from .hydrology import HydrologyFamily, generate_weather, hbv
from .rlc import RLCFamily, inductance, simulate_rlc
from .sinusoid import SinusoidFamily

FAMILIES = {"sinusoid": SinusoidFamily, "rlc": RLCFamily, "hydrology": HydrologyFamily, "camels": CamelsFamily}


def build_family(kind: str, **kwargs) -> TaskFamily:
    """A task family by name (``sinusoid``, ``rlc``, ``hydrology``, ``camels``) with its keyword arguments."""
    if kind not in FAMILIES:
        raise ValueError(f"task family must be one of {sorted(FAMILIES)}, got {kind!r}")
    return FAMILIES[kind](**kwargs)


__all__ = [
    "Task", "TaskFamily", "make_tasks", "sample_supports", "stack_pool", "task_rng", "build_family", "FAMILIES",
    "SinusoidFamily", "RLCFamily", "HydrologyFamily", "CamelsFamily", "load_camels_basin", "simulate_rlc",
    "inductance", "generate_weather", "hbv",
]
