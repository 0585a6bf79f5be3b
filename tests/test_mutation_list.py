"""The mutation list stays applicable and documented (the mutations themselves run in `make mutation`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.mutation import as_markdown
from devtools.mutations import MUTATIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_applies_once_and_names_existing_tests(m):
    text = (ROOT / m.file).read_text()
    assert text.count(m.original) == 1, f"{m.name}: its original text is not exactly once in {m.file}"
    assert m.mutated != m.original
    for node in m.tests:
        path, _, name = node.partition("::")
        test_name = name.split("[")[0]
        assert f"def {test_name}(" in (ROOT / path).read_text(), f"{m.name}: {node} does not exist"


def test_docs_testing_lists_every_mutation():
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    assert as_markdown(MUTATIONS) in (ROOT / "docs" / "testing.md").read_text()
