"""Engines over the tiny random pair, built once per module and per options (float32)."""

import pytest

from exactness import write_tiny_pair
from saguaro import Engine


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("engine"))


@pytest.fixture(scope="module")
def engines(folders):
    made = {}

    def get(mode, **options):
        key = (mode, tuple(sorted(options.items())))
        if key not in made:
            draft = folders[1] if mode != "ar" else None
            made[key] = Engine(folders[0], draft, mode, dtype="float32", **options)
        return made[key]

    yield get
    for engine in made.values():
        engine.close()
