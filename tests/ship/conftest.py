"""Tiny digits runs (a teacher, a Hinton distill run and a FitNets run) made once for the ship tests."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from kdlab.pipeline import prepare_data, run_distill, run_teacher
from kdlab.recipes import load_recipe

FAST = ["teacher.model.hidden=[64]", "teacher.train.epochs=2", "student.train.epochs=2"]
FITNETS = FAST + ["student.model.hidden=[12]", "distill.method=fitnets", "distill.fitnets={pairs: {net.1: net.1}}"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("ship-runs")
    recipe = load_recipe("digits-mlp", FAST)
    data = prepare_data(recipe)
    run_teacher(recipe, data, out=root / "teacher", progress=False)
    run_distill(recipe, root / "teacher" / "best.pt", data, out=root / "distill", progress=False)
    run_distill(load_recipe("digits-mlp", FITNETS), root / "teacher" / "best.pt", data, out=root / "fitnets", progress=False)
    return {"teacher": root / "teacher", "distill": root / "distill", "fitnets": root / "fitnets", "data": data}
