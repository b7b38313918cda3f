"""Model-agnostic serving: engines (a loaded model and its batcher), start-up, the served set.

    Service       what the process serves: phase, models by name, requests in flight, drain
    Engine        one loaded model and its batcher: inputs in, result out
    loading       settings -> a warmed model (resolve, verify, stream, build, warm)
    Registry      the versions of the model: desired vs actual state, one reconcile loop
    Traffic       the routing in force (stable, canary share, shadow share)

It knows no wire format: the protocols (`sidecar.api`) call it with `sidecar.models` inputs and
get `sidecar.models` results back.
"""

from __future__ import annotations

from sidecar.serving.engine import Engine, Inference
from sidecar.serving.loading import DEMO_NAME, LoadReport
from sidecar.serving.registry import Registry
from sidecar.serving.service import DEFAULT_ALIAS, Phase, ServedModel, Service
from sidecar.serving.shadow import OUTCOMES, Agreement
from sidecar.serving.traffic import ROLES, Traffic
from sidecar.serving.versions import Lease, Version, VersionState

__all__ = [
    "DEFAULT_ALIAS",
    "DEMO_NAME",
    "OUTCOMES",
    "ROLES",
    "Agreement",
    "Engine",
    "Inference",
    "Lease",
    "LoadReport",
    "Phase",
    "Registry",
    "ServedModel",
    "Service",
    "Traffic",
    "Version",
    "VersionState",
]
