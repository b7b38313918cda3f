"""Open Inference Protocol v2 wire types: a model's signature, the infer request, and the JSON
Schemas `/openapi.json` publishes for the protocol's routes (`sidecar.api.oip`).

`InferRequest.parse` checks the JSON header against the model's signature (names, datatypes,
the outputs asked for and how) before `sidecar.api.oip_tensors` decodes any data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.api import oip_tensors, wire
from sidecar.api.oip_tensors import BINARY_ONLY, DATATYPES, Array, Tensor
from sidecar.api.openapi import BOOLEAN, INTEGER, STRING, array
from sidecar.api.schema import JsonSchema
from sidecar.errors import InvalidInputError, TooManyInputsError, UnsupportedTaskError
from sidecar.models import ModelCard


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs as the protocol names them: (name, datatype, shape) each."""

    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, card: ModelCard) -> Signature:
        text = ("text", "BYTES", (-1,))
        if card.task == "embed":
            return cls((text,), (("embedding", "FP32", (-1, card.embedding_dim or -1)),))
        if card.task == "classify":
            return cls((text,), (("probabilities", "FP32", (-1, len(card.labels or ()))),))
        if card.task == "rerank":
            return cls((("query", "BYTES", (1,)), text), (("scores", "FP32", (-1,)),))
        if card.task == "tensor":
            return cls(
                tuple(
                    (s.name, oip_tensors.datatype_of(s.dtype), s.shape) for s in card.inputs or ()
                ),
                tuple(
                    (s.name, oip_tensors.datatype_of(s.dtype), s.shape) for s in card.outputs or ()
                ),
            )
        raise UnsupportedTaskError(f"the Open Inference Protocol does not serve '{card.task}'")

    def datatype(self, name: str) -> str:
        return {n: d for n, d, _ in (*self.inputs, *self.outputs)}[name]


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the inputs decoded, the outputs asked for and how."""

    id: str | None
    arrays: dict[str, Array]
    outputs: tuple[str, ...]  # in the order to answer them
    binary: tuple[bool, ...]  # per output: as binary data
    parameters: dict[str, Any]

    @classmethod
    def parse(
        cls,
        header: bytes,
        binary: memoryview,
        signature: Signature,
        *,
        max_bytes: int,
        max_items: int,
    ) -> InferRequest:
        """Check the header against `signature`, then decode the data.

        Args:
            header: the JSON part of the body.
            binary: the binary data after it.
            signature: the model's inputs and outputs.
            max_bytes: the body's size, which bounds the elements a shape may declare.
            max_items: the most items (rows of the first axis) a request may hold.

        Raises:
            InvalidInputError: 400.
            TooManyInputsError: 413, before any data is decoded.
        """
        data = wire.parse_json(header, "the request header")
        request_id = data.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidInputError("'id' must be a string")
        parameters = _object(data, "parameters", "parameters")
        inputs = data.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise InvalidInputError("'inputs' must be a non-empty list")
        if len(inputs) > len(signature.inputs):
            raise InvalidInputError(
                f"'inputs' has {len(inputs)} tensors; the model takes "
                f"{sorted(name for name, _, _ in signature.inputs)}"
            )
        tensors = [
            oip_tensors.parse_tensor(value, index, max_bytes=max_bytes)
            for index, value in enumerate(inputs)
        ]
        _check_inputs(tensors, signature)
        for tensor in tensors:
            if tensor.shape and tensor.shape[0] > max_items:
                raise TooManyInputsError(
                    f"input {tensor.name!r} holds {tensor.shape[0]} items; at most {max_items} "
                    "are allowed per request"
                )
        outputs, as_binary = _outputs(data.get("outputs"), parameters, signature)
        arrays = oip_tensors.decode(tensors, binary)
        return cls(request_id, arrays, outputs, as_binary, parameters)


def _object(data: dict[str, Any], field: str, name: str) -> dict[str, Any]:
    value = data.get(field, {})
    if not isinstance(value, dict):
        raise InvalidInputError(f"'{name}' must be an object")
    return value


def _check_inputs(tensors: list[Tensor], signature: Signature) -> None:
    """Names and datatypes against the model's, before any data is decoded."""
    wanted = {name: datatype for name, datatype, _ in signature.inputs}
    given = [tensor.name for tensor in tensors]
    unknown = [name for name in given if name not in wanted]
    if unknown:
        raise InvalidInputError(
            f"unknown input {unknown[0][:64]!r}; the model takes {sorted(wanted)}"
        )
    missing = sorted(set(wanted) - set(given))
    if missing:
        raise InvalidInputError(f"missing input(s) {missing}; the model takes {sorted(wanted)}")
    for tensor in tensors:
        if tensor.datatype != wanted[tensor.name]:
            raise InvalidInputError(
                f"input {tensor.name!r} has datatype {tensor.datatype}; the model takes "
                f"{wanted[tensor.name]}"
            )


def _outputs(
    value: Any, parameters: dict[str, Any], signature: Signature
) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The outputs asked for (all when none are) and whether each goes as binary data."""
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInputError("'parameters.binary_data_output' must be a boolean")
    known = [name for name, _, _ in signature.outputs]
    if value is None:
        return tuple(known), tuple(default for _ in known)
    if not isinstance(value, list) or not value or len(value) > len(known):
        raise InvalidInputError(f"'outputs' must be a list of at most {len(known)} outputs")
    names: list[str] = []
    binary: list[bool] = []
    for index, output in enumerate(value):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInputError(f"outputs[{index}] must be an object with a string 'name'")
        name = output["name"]
        if name not in known or name in names:
            raise InvalidInputError(
                f"outputs[{index}]: {name[:64]!r} is unknown or asked twice; the model gives "
                f"{known}"
            )
        options = _object(output, "parameters", f"outputs[{index}].parameters")
        if "classification" in options:
            raise InvalidInputError("the classification extension is not supported")
        as_binary = options.get("binary_data", default)
        if not isinstance(as_binary, bool):
            raise InvalidInputError(f"outputs[{index}].parameters.binary_data must be a boolean")
        names.append(name)
        binary.append(as_binary)
    for name, as_binary in zip(names, binary, strict=True):
        if not as_binary and signature.datatype(name) in BINARY_ONLY:
            raise InvalidInputError(
                f"output {name!r} is {signature.datatype(name)}, which JSON cannot carry: ask "
                "for it as binary data (binary_data: true)"
            )
    return tuple(names), tuple(binary)


# -- the JSON Schemas of /openapi.json -------------------------------------------------------------

ERROR: JsonSchema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": STRING},
    "additionalProperties": False,
}
VERSION_PARAMETER: JsonSchema = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "the served version (as /v1/models shows it); any other is 404",
    "schema": STRING,
}
SERVER: JsonSchema = {
    "type": "object",
    "properties": {"name": STRING, "version": STRING, "extensions": array(STRING)},
}
SPEC: JsonSchema = {
    "type": "object",
    "properties": {
        "name": STRING,
        "datatype": {"enum": list(DATATYPES)},
        "shape": {**array(INTEGER), "description": "-1: any size (the first is the batch axis)"},
    },
}
MODEL: JsonSchema = {
    "type": "object",
    "properties": {
        "name": STRING,
        "versions": array(STRING),
        "platform": STRING,
        "inputs": array(SPEC),
        "outputs": array(SPEC),
    },
}
READY: JsonSchema = {"type": "object", "properties": {"name": STRING, "ready": BOOLEAN}}
TENSOR: JsonSchema = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        **SPEC["properties"],
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {"type": "array", "description": "flat or nested; absent for binary data"},
    },
}
INFER_REQUEST: JsonSchema = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": STRING,
        "parameters": {
            "type": "object",
            "properties": {
                "binary_data_output": BOOLEAN,
                "truncate": BOOLEAN,
                "normalize": BOOLEAN,
                "raw_scores": BOOLEAN,
            },
        },
        "inputs": array(TENSOR),
        "outputs": array(
            {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": STRING,
                    "parameters": {"type": "object", "properties": {"binary_data": BOOLEAN}},
                },
            }
        ),
    },
}
INFER_RESPONSE: JsonSchema = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": STRING,
        "model_version": STRING,
        "id": STRING,
        "outputs": array(TENSOR),
    },
}
