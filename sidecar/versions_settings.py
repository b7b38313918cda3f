"""Settings of model versions in one pod (DESIGN section 12), read from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.environ import EnvReader, choice, float_in, int_in, nonempty, socket_path

SWAP_POLICIES = ("availability", "resource")


@dataclass(frozen=True)
class VersionsSettings:
    """How versions are watched, swapped and administered.

    poll_s: how often the model root and versions.json are re-read (0: never).
    swap_policy: `availability` loads the new version beside the old and refuses a swap
        without room for both; `resource` unloads first (503 + Retry-After in between).
    max_bytes: the weight bytes all resident versions may hold (0: no budget on a CPU; on
        CUDA the free device memory bounds it too). *addition*
    canary_max_error_ratio: roll the canary back when its share of 5xx answers over the last
        `canary_window` requests passes this (None: never).
    admin_uds: the admin API's Unix socket (None: no admin API).
    versions_file: the desired state's file when not <root>/versions.json (a ConfigMap mounted
        beside a read-only model root). *addition*
    """

    poll_s: float = 10.0
    swap_policy: str = "availability"
    max_bytes: int = 0
    canary_max_error_ratio: float | None = None
    canary_window: int = 200
    admin_uds: str | None = None
    versions_file: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> VersionsSettings:
        """Parse the SIDECAR_* variables of this feature.

        Raises:
            ConfigError: naming the variable, the value and what is accepted.
        """
        env = EnvReader(environ)
        return cls(
            poll_s=env.get("SIDECAR_MODEL_POLL_S", float_in(0.0, 86400.0), 10.0),
            swap_policy=env.get("SIDECAR_SWAP_POLICY", choice(SWAP_POLICIES), "availability"),
            max_bytes=env.get("SIDECAR_VERSIONS_MAX_BYTES", int_in(0, 1 << 50), 0),
            canary_max_error_ratio=env.get(
                "SIDECAR_CANARY_MAX_ERROR_RATIO", float_in(0.0, 1.0), None
            ),
            canary_window=env.get("SIDECAR_CANARY_WINDOW", int_in(10, 1_000_000), 200),
            admin_uds=env.get("SIDECAR_ADMIN_UDS", socket_path, None),
            versions_file=env.get("SIDECAR_VERSIONS_FILE", nonempty, None),
        )

    def public(self) -> dict[str, Any]:
        return {
            "poll_s": self.poll_s,
            "swap_policy": self.swap_policy,
            "max_bytes": self.max_bytes,
            "canary_max_error_ratio": self.canary_max_error_ratio,
            "canary_window": self.canary_window,
            "admin_uds": self.admin_uds,
            "versions_file": self.versions_file,
        }
