"""Fixtures shared by unit tests of several packages (the demo store's layout, a status credential)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.layout import Layout, load_layout
from gateway.localization.pathloss import PathLossModel
from tests.conftest import LAYOUT
from tests.unit.status.support import write_test_credential


@pytest.fixture(scope="session")
def layout() -> Layout:
    return load_layout(LAYOUT)


@pytest.fixture(scope="session")
def model(layout: Layout) -> PathLossModel:
    return PathLossModel.from_layout(layout)


@pytest.fixture(scope="session")
def credential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_credential(tmp_path_factory.mktemp("cred") / "status-credential.json")
