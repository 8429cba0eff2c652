"""The cost of a training step of each ablation variant, measured in one paired run.

CPU-minutes that runs accumulate depend on the machine and on what else it runs (the same
1,000 steps took 3.6 and 5.1 CPU-minutes on two days), so "equal compute" is not read from
them. Instead every variant's step is timed here in one run on one machine: one process per
core, each building every variant once and then timing them in turns (``steps`` updates a
turn, the order rotated from turn to turn and from process to process), so that all variants
meet the same load, the same thermal state and the same neighbours. A variant's cost is the
median over those turns of the process CPU seconds of an update (forward, backward, Adamax,
EMA: what a training run repeats; validations and checkpoints are not included).

:func:`equal_compute_steps` turns the costs into the step each variant reaches on a budget
that is fixed by the *measured* set of variants (``budget_steps`` steps of the cheapest of
them), so the cut-off does not move with the variants a table shows.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from biva.experiments.ablation.runner import AblationSettings, config_maker
from biva.training import Trainer
from biva.utils.atomic import atomic_write_json
from biva.utils.machine import describe_machine

STEP_COSTS_FILE = "step_costs.json"


@dataclass(frozen=True)
class StepCostPlan:
    """What one measurement times: ``turns`` turns of ``steps`` timed updates per variant in
    each of ``workers`` processes (one per core), after ``warmup`` untimed updates."""

    steps: int = 10
    turns: int = 3
    warmup: int = 2
    workers: int = 1


def _worker(settings: AblationSettings, variants: Sequence[str], plan: StepCostPlan,
            offset: int) -> dict[str, list[list[float]]]:
    """One process's turns: {variant: [[cpu_s, wall_s] per turn]} (seconds per update)."""
    import torch

    torch.set_num_threads(1)
    make_config, trainers = config_maker(settings), {}
    with tempfile.TemporaryDirectory(prefix="biva-step-costs-") as tmp:
        for v in variants:
            cfg, data = make_config(v, 0)
            trainers[v] = Trainer(cfg, Path(tmp) / v, data=data)
            trainers[v].timed_updates(plan.warmup)
        out: dict[str, list[list[float]]] = {v: [] for v in variants}
        for turn in range(plan.turns):
            shift = (offset + turn) % len(variants)
            for v in [*variants[shift:], *variants[:shift]]:
                cpu, wall = trainers[v].timed_updates(plan.steps)
                out[v].append([cpu / plan.steps, wall / plan.steps])
    return out


def measure_step_costs(settings: AblationSettings, variants: Sequence[str] | None = None,
                       plan: StepCostPlan = StepCostPlan()) -> dict:
    """Seconds per training update of each variant of an ablation (``settings.variants``
    unless ``variants``, seed 0, one thread a process), paired (see the module docstring).

    Returns the JSON-ready ``step_costs.json``: per variant the median CPU and wall
    seconds of an update and every turn's figures, the machine and its load before and after.
    """
    if plan.steps < 1 or plan.turns < 1 or plan.workers < 1:
        raise ValueError(f"steps, turns and workers must be >= 1, found {asdict(plan)}")
    variants = list(variants or settings.variants)
    before = describe_machine()
    if plan.workers == 1:
        turns = [_worker(settings, variants, plan, 0)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(plan.workers) as pool:
            turns = pool.starmap(_worker, [(settings, variants, plan, w)
                                           for w in range(plan.workers)])
    costs = {}
    for v in variants:
        samples = [t for worker in turns for t in worker[v]]
        costs[v] = {"cpu_s_per_step": statistics.median(s[0] for s in samples),
                    "wall_s_per_step": statistics.median(s[1] for s in samples),
                    "turns": samples}
    return {"what": "seconds per training update (forward, backward, Adamax, EMA), medians "
            "over paired turns: every variant timed in turns in each process, one process "
            "per core, at the same time on one machine",
            "plan": asdict(plan), "variants": costs, "machine": before,
            "load_1min_after": describe_machine()["load_1min"],
            "config": settings.config, "data": None if settings.data is None
            else str(settings.data), "overrides": list(settings.overrides),
            "cores_used": plan.workers, "cores": os.cpu_count()}


def write_step_costs(settings: AblationSettings, plan: StepCostPlan = StepCostPlan()) -> Path:
    """:func:`measure_step_costs` of the ablation's variants into OUT/step_costs.json."""
    out = Path(settings.out) / STEP_COSTS_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, measure_step_costs(settings, plan=plan))
    return out


def equal_compute_steps(step_costs: dict, budget_steps: int) -> dict:
    """The step each measured variant reaches on one compute budget: ``budget_steps``
    updates of the cheapest measured variant (CPU seconds of ``step_costs``), divided by the
    variant's own cost of an update. Returns {"cpu_s": budget, "reference": variant,
    "steps": {variant: fractional step}}; a variant never exceeds ``budget_steps``."""
    costs = {v: c["cpu_s_per_step"] for v, c in step_costs["variants"].items()}
    reference = min(costs, key=costs.get)
    budget = budget_steps * costs[reference]
    return {"cpu_s": budget, "reference": reference,
            "steps": {v: budget / c for v, c in costs.items()}}


def value_at_step(curve: dict, step: float, key: str = "valid_elbo") -> float | None:
    """The best validation value (``key``, higher is better) a run held at ``step``: the best
    validation at or before it, or the curve at ``step`` itself (linear between the
    validations around it), whichever is higher. None before the first validation or past
    the last one (no extrapolation)."""
    s, v = curve["step"], curve[key]
    before = [x for x, t in zip(v, s, strict=True) if t <= step + 1e-9]
    if not before or not s or s[-1] < step - 1e-9:
        return None
    i = len(before) - 1
    at = before[-1]
    if i + 1 < len(s) and s[i + 1] > s[i]:
        w = (step - s[i]) / (s[i + 1] - s[i])
        at = v[i] + w * (v[i + 1] - v[i])
    return max(*before, at) if math.isfinite(at) else max(before)
