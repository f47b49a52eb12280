"""The docs say what is tested: every test docs/reliability.md names exists."""

import re

from conftest import REPO


def test_every_test_the_reliability_page_names_exists():
    named = re.findall(r"`(test_\w+)::(test_\w+)`", (REPO / "docs" / "reliability.md").read_text())
    assert len(named) > 40
    missing = [f"{m}::{t}" for m, t in named if f"def {t}(" not in (REPO / "tests" / f"{m}.py").read_text()]
    assert missing == []
