"""Fixtures shared by the arbiter's unit tests."""

import pytest

from memwarden.state.db import open_state


@pytest.fixture
def db(tmp_path):
    database = open_state(tmp_path / "state")
    yield database
    database.close()
