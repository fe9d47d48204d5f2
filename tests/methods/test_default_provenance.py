"""Every method says where its defaults come from: in its code and in the feature-methods guide's table."""

import re

import pytest

from kdlab.methods import METHODS, KD
from tests.conftest import REPO


def _readme_table() -> str:
    text = (REPO / "docs" / "guides" / "feature-methods.md").read_text()
    start = text.index("**Where the defaults come from.**")
    return text[start:text.index("**Loss shares.**", start)]


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).params is not None])
def test_each_parameter_dataclass_states_its_defaults_provenance(name):
    assert "Where the defaults come from" in (METHODS.get(name).params.__doc__ or "")


def test_the_shared_kd_defaults_state_their_provenance():
    assert "Where the defaults" in KD.__doc__ and "--kd_T 4" in KD.__doc__


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).params is not None])
def test_the_readme_table_has_a_row_for_each_method_with_parameters(name):
    rows = [line for line in _readme_table().splitlines() if line.startswith("| ")]
    assert any(re.search(rf"`{re.escape(name)}`", row.split("|")[1]) for row in rows), name
