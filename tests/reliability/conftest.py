
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Ray's awaitables need asyncio


