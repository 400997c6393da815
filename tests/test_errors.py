"""The error tree carries each class's HTTP status: one table, and the docstring shows it."""

from __future__ import annotations

import re

import pytest

from pifarm import errors


def _classes() -> dict[str, type[errors.PifarmError]]:
    return {n: c for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.PifarmError)}


def test_the_docstring_table_is_the_code():
    rows = dict(re.findall(r"^[\s│├└─]*(\w+)\s+(\d{3})\s", errors.__doc__, re.M))
    assert set(rows) == set(_classes()), "every class has one row in the tree, and every row is a class"
    assert {n: c.http_status for n, c in _classes().items()} == {n: int(s) for n, s in rows.items()}


@pytest.mark.parametrize("status,kind,want", [
    (404, "NotFound", errors.NotFound), (503, "ReadOnlyError", errors.ReadOnlyError),
    (400, "SignatureError", errors.SignatureError), (500, "PifarmError", errors.PifarmError),
    (404, "", errors.NotFound), (413, "TooLarge", errors.TooLarge), (413, "", errors.TooLarge),
    (422, "", errors.UsageError), (401, "", errors.Unauthorized), (403, "", errors.Forbidden),
    (503, "", errors.ReadOnlyError), (502, "", errors.PifarmError), (400, "NoSuchClass", errors.UsageError),
    (400, "Exception", errors.UsageError),
])
def test_an_error_response_maps_back_to_its_class(status, kind, want):
    assert errors.for_response(status, kind) is want

