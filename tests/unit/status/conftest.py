from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.status.support import write_test_credential


@pytest.fixture(scope="session")
def credential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_credential(tmp_path_factory.mktemp("cred") / "status-credential.json")
