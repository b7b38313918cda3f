"""The service: admission, drain, and model lookup, on a tiny real model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sidecar.errors import DrainingError, ModelNotFoundError, NotReadyError
from sidecar.models import Embeddings, TextInputs
from tests.sidecar.conftest import StartServer


async def test_drain_finishes_admitted_work_and_refuses_new(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_BATCH_MAX_SIZE="4")
    service = s.service
    engine = service.model(None).engine
    entered, count = asyncio.Event(), [0]

    async def request(i: int) -> np.ndarray:
        with service.admit():
            count[0] += 1
            if count[0] == 10:
                entered.set()
            inference = await engine.infer(TextInputs([f"text {i}"]), deadline=None)
            assert isinstance(inference.result, Embeddings)
            return inference.result.vectors[0]

    admitted = [asyncio.create_task(request(i)) for i in range(10)]
    await entered.wait()  # all ten admitted, none finished: the first batch is still forming
    draining = asyncio.create_task(service.drain())
    await asyncio.sleep(0)
    with pytest.raises(DrainingError), service.admit():
        pass
    assert await asyncio.wait_for(draining, 5) is True
    assert len(await asyncio.gather(*admitted)) == 10


async def test_models_are_found_by_name_or_alias(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir, load=False, SIDECAR_MODEL_NAME="minilm")
    with pytest.raises(NotReadyError):
        s.service.model(None)
    with pytest.raises(NotReadyError), s.service.admit():
        pass
    await s.server.load()
    assert s.service.model(None) is s.service.model("default") is s.service.model("minilm")
    with pytest.raises(ModelNotFoundError, match="this server serves 'minilm'"):
        s.service.model("other")
