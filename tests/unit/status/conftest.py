from __future__ import annotations

from pathlib import Path

import pytest

from gateway.status.auth import write_credential
from tests.unit.status.support import PASSWORD, USER


@pytest.fixture(scope="session")
def credential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cred") / "status-credential.json"
    write_credential(p, USER, PASSWORD)
    return p
