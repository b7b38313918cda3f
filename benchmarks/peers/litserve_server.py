"""LitServe peer: sentence-transformers behind a batching LitAPI, for benchmarks.serve.

    .bench-venvs/litserve/bin/python benchmarks/peers/litserve_server.py \
        --model /path/to/all-MiniLM-L6-v2 --port 8000 [--max-batch-size 32] [--batch-timeout 0.005]

POST /predict {"inputs": [text], ...} -> {"embedding": [float, ...]}  (one text per request, as
the load generator sends). GET /health answers 200 once the model is loaded. Runs offline: the
model is a local directory, never a hub id.
"""

from __future__ import annotations

import argparse
import inspect
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import litserve as ls


class Embedder(ls.LitAPI):
    def __init__(self, model_path: str, dtype: str, **batching: float) -> None:
        # LitServe >= 0.2.7 takes the batching settings on the LitAPI; older ones on LitServer.
        params = inspect.signature(ls.LitAPI.__init__).parameters
        super().__init__(**({k: v for k, v in batching.items() if k in params}))
        self.model_path = model_path
        self.dtype = dtype

    def setup(self, device: str) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(self.model_path, device="cpu")
        self.model.to(getattr(torch, self.dtype))
        self.model.encode(["warm up"] * 8)

    def decode_request(self, request: dict) -> str:
        inputs = request["inputs"]
        return inputs[0] if isinstance(inputs, list) else inputs

    def batch(self, inputs: list[str]) -> list[str]:
        return list(inputs)

    def predict(self, texts: list[str] | str):
        if isinstance(texts, str):  # unbatched path (max_batch_size=1)
            return self.model.encode([texts], batch_size=1)[0]
        return self.model.encode(texts, batch_size=len(texts))

    def unbatch(self, output) -> list:
        return list(output)

    def encode_response(self, output) -> dict:
        return {"embedding": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model directory")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    api = Embedder(args.model, args.dtype, **batching)
    server_params = inspect.signature(ls.LitServer.__init__).parameters
    on_api = inspect.signature(ls.LitAPI.__init__).parameters
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=args.workers,
        **{k: v for k, v in batching.items() if k not in on_api},
        **({"generate_client_file": False} if "generate_client_file" in server_params else {}),
    )
    server.run(port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
