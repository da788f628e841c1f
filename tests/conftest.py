"""Session-wide synthetic models and their stores, built once and shared by test files."""

from __future__ import annotations

from pathlib import Path

import pytest
from synth_cases import CASES

from mlxstore.pack import pack
from mlxstore.synth import make_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """`model_dir(case_id)`: the source directory of a case from synth_cases.CASES."""
    built: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in built:
            arch, options = CASES[case]
            built[case] = make_model_dir(arch, tmp_path_factory.mktemp("src") / case, **options)
        return built[case]

    return get


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, model_dir):
    """`store_dir(case_id)`: that case packed with default options."""
    built: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in built:
            built[case] = pack(model_dir(case), tmp_path_factory.mktemp("store") / case, progress=False)
        return built[case]

    return get
