from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra import Infra, provide_infra


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Real Kafka, MinIO, Redis and Weaviate for the whole session (see tests/infra.py for where from)."""
    with provide_infra(tmp_path_factory.mktemp("stack")) as servers:
        yield servers
