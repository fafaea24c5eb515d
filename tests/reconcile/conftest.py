import os
import sys
from pathlib import Path

import pytest

# billgen.py is a test helper module next to the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def forked_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the children `os.fork` makes during the test (the parent side records them)."""
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids
