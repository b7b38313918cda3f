"""Settings of generation (DESIGN section 14): the KV cache's size and the step's token budget.

    SIDECAR_GEN_MAX_SEQS          sequences generated at once: the KV cache's slots (default 32)
    SIDECAR_GEN_MAX_MODEL_LEN     tokens of one sequence, prompt and output (default: the model's
                                  position limit, at most 8192)
    SIDECAR_GEN_KV_FRACTION       share of free memory the cache may take (default 0.9): of free
                                  device memory on a GPU; on a CPU, of the memory the system
                                  reports free at start. The slots are those that fit, at most
                                  SIDECAR_GEN_MAX_SEQS.
    SIDECAR_GEN_MAX_BATCH_TOKENS  tokens computed in one step, decode tokens and prefill chunks
                                  together (default 512, more than SIDECAR_GEN_MAX_SEQS; addition)

Sequences waiting for a slot are bounded by SIDECAR_QUEUE_MAX (429 past it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.environ import EnvReader, float_in, int_in
from sidecar.errors import ConfigError


@dataclass(frozen=True)
class GenerationSettings:
    """What sizes generation; `from_env` reads the SIDECAR_GEN_* variables."""

    max_seqs: int = 32
    max_model_len: int | None = None
    kv_fraction: float = 0.9
    max_batch_tokens: int = 512

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GenerationSettings:
        """Raises ConfigError naming the variable, the value and what is accepted."""
        env = EnvReader(environ)
        settings = cls(
            max_seqs=env.get("SIDECAR_GEN_MAX_SEQS", int_in(1, 4096), 32),
            max_model_len=env.get("SIDECAR_GEN_MAX_MODEL_LEN", int_in(16, 1 << 20), None),
            kv_fraction=env.get("SIDECAR_GEN_KV_FRACTION", float_in(0.01, 1.0), 0.9),
            max_batch_tokens=env.get("SIDECAR_GEN_MAX_BATCH_TOKENS", int_in(16, 1 << 20), 512),
        )
        # Every running sequence decodes one token a step before any prompt is prefilled: a
        # budget below the sequences would leave no room for newcomers while all run.
        if settings.max_batch_tokens <= settings.max_seqs:
            raise ConfigError(
                "SIDECAR_GEN_MAX_BATCH_TOKENS",
                str(settings.max_batch_tokens),
                f"more than SIDECAR_GEN_MAX_SEQS ({settings.max_seqs})",
            )
        return settings
