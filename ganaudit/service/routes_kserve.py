"""The Open Inference Protocol (KServe v2): ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}``, ``/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer`` (JSON, and the binary
tensor data extension)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .. import __version__
from ..core.imaging import shown
from ..core.thresholds import finite_float
from ..runtime.detector import Verdict, error_verdict, finite_or_none
from . import binary
from . import schemas as S
from .errors import ServiceError
from .state import Service, get_service, media_type

PLATFORM = "onnxruntime_onnx"
INPUT_NAME = "image"

router = APIRouter()

_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
    }
}


@router.get("/v2", response_model=S.ServerMetadata, tags=["kserve-v2"], summary="Server metadata", responses={401: S.ERR_401})
async def server_metadata() -> dict[str, Any]:
    return {"name": "ganaudit", "version": __version__, "extensions": [binary.EXTENSION]}


@router.get("/v2/health/live", response_model=S.LiveResponse, tags=["kserve-v2"], summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready",
    response_model=S.ReadyResponse,
    tags=["kserve-v2"],
    summary="Readiness: model loaded and warm-up batch done",
    responses={503: {"model": S.ReadyResponse, "description": "Not ready yet (warming up) or shutting down.",
                     "content": {"application/json": {"example": {"ready": False}}}}},
)  # fmt: skip
async def ready(service: Annotated[Service, Depends(get_service)]) -> Response:
    return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)


@router.get(
    "/v2/models/{name}",
    response_model=S.ModelMetadata,
    tags=["kserve-v2"],
    summary="Model metadata",
    responses={401: S.ERR_401, 404: S.ERR_404_MODEL},
)
async def model_metadata(name: str, service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    service.check_model(name)
    return {
        "name": service.name,
        "versions": [service.spec_hash],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": n, "datatype": t, "shape": [-1]} for n, t in service.output_specs()],
    }


@router.get(
    "/v2/models/{name}/ready",
    response_model=S.ModelReadyResponse,
    tags=["kserve-v2"],
    summary="Model readiness",
    responses={401: S.ERR_401, 404: S.ERR_404_MODEL, 503: {"model": S.ModelReadyResponse, "description": "Not ready yet.",
               "content": {"application/json": {"example": {"name": "tiny-zeros", "ready": False}}}}},
)  # fmt: skip
async def model_ready(name: str, service: Annotated[Service, Depends(get_service)]) -> Response:
    service.check_model(name)
    return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)


@router.post(
    "/v2/models/{name}/infer",
    response_model=S.InferResponse,
    tags=["kserve-v2"],
    summary="Inference (BYTES tensor of base64 encoded images)",
    responses={
        400: S.ERR_400_INFER, 401: S.ERR_401, 404: S.ERR_404_MODEL, 413: S.ERR_413, 415: S.ERR_415,
        503: S.ERR_503, 504: S.ERR_504,
    },  # fmt: skip
    openapi_extra=_INFER_BODY,
)
async def infer(name: str, request: Request, service: Annotated[Service, Depends(get_service)]) -> Response:
    """One BYTES input holding N encoded image files (base64 strings in JSON, raw bytes in binary form);
    outputs `anomaly_score`, `anomaly_flag`, `reasons` and, when the model has a generated-image head,
    `generated_score`, `generated_flag` (and `in_domain` with the domain gate on), each of shape [N]. An
    abstaining generated verdict gives `generated_score` null (NaN in binary form) and `generated_flag`
    false. The request `id` is echoed. Supports the binary tensor data extension (what
    `tritonclient.http` sends by default). An inference request is atomic: an image that cannot be decoded
    fails it with 400 (use `/v1/detect` for per-image errors)."""
    service.check_model(name)
    payload, raw = await _read_infer_request(request, service.settings.max_queue)
    inp, data = _one_bytes_input(payload, raw, service.settings.max_queue)
    available = dict(service.output_specs())
    wanted = [o.name for o in payload.outputs] if payload.outputs else list(available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ServiceError(
            400, "invalid_request", f"unknown output(s) {unknown}; this model has {list(available)}"
        )
    thresholds = service.thresholds(
        _number_param(payload.parameters, "anomaly_threshold"), _number_param(payload.parameters, "generated_threshold"),
        status=400,
    )
    blobs = _decode_elements(inp.name, data)
    service.check_capacity(len(blobs))
    prepared = await service.decode(blobs, request.is_disconnected)
    for i, p in enumerate(prepared):
        if isinstance(p, Exception):
            service.metrics.count_verdicts([error_verdict(None, e) for e in prepared if isinstance(e, Exception)])
            raise ServiceError(400, "invalid_request", f"input {inp.name!r} element {i}: {p}")
    verdicts = await service.score(prepared, thresholds, False)
    return _infer_response(service, payload, wanted, available, verdicts)


# The JSON of a request of n images holds a few values per image and a few dozen more; parsing runs on the
# event loop, and 6.6 million empty lists in 20 MB stalled every request for 4.6 s. Counted before parsing.
JSON_VALUES_PER_IMAGE = 8
JSON_VALUES_SLACK = 1024


def _check_json_size(head: bytes, max_images: int) -> None:
    """Refuse, unparsed, a JSON part with far more values than a request of ``max_images`` images needs."""
    limit = JSON_VALUES_PER_IMAGE * max_images + JSON_VALUES_SLACK
    values = head.count(b",") + head.count(b"[")  # base64 holds neither; cheap next to parsing
    if values > limit:
        raise ServiceError(
            413, "too_many_values",
            f"the request's JSON holds about {values} values, more than a request of at most {max_images} images "
            f"(--max-queue) needs ({limit}); split it into smaller requests",
        )  # fmt: skip


async def _read_infer_request(request: Request, max_images: int) -> tuple[S.InferRequest, list[bytes | None]]:
    """The JSON part of an inference request, and the binary data of each input (None: its data is in the JSON)."""
    media = media_type(request)
    header_length = request.headers.get(binary.HEADER)
    if media and media != "application/json" and not media.endswith("+json") and not (
        header_length is not None and media == "application/octet-stream"
    ):
        raise ServiceError(415, "unsupported_media_type", f"Content-Type {media!r} is not accepted: send application/json")
    try:
        head, rest = binary.split_body(await request.body(), header_length)
        _check_json_size(head, max_images)
        payload = S.InferRequest.model_validate_json(head)
        raw = binary.take_inputs([_binary_size(i.parameters) for i in payload.inputs], rest)
    except binary.BinaryFormatError as e:
        raise ServiceError(400, "invalid_request", str(e)) from None
    except ValidationError as e:
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ())) or 'body'}: {err.get('msg', '')}" for err in e.errors()]
        raise ServiceError(400, "invalid_request", "; ".join(parts)) from None
    return payload, raw


def _one_bytes_input(payload: S.InferRequest, raw: list[bytes | None], max_images: int) -> tuple[Any, list[Any]]:
    """The request's one BYTES input and its elements, flattened, checked against its shape."""
    if len(payload.inputs) != 1:
        raise ServiceError(400, "invalid_request", f"expected exactly one input tensor, got {len(payload.inputs)}")
    inp = payload.inputs[0]
    if inp.datatype.upper() != "BYTES":
        raise ServiceError(400, "invalid_request", f"input {inp.name!r} must have datatype BYTES, got {inp.datatype!r}")
    if inp.data is None and raw[0] is None:
        raise ServiceError(400, "invalid_request", f"input {inp.name!r} has no data and no binary_data_size")
    if inp.data is not None and raw[0] is not None:
        raise ServiceError(400, "invalid_request", f"input {inp.name!r} has both data and binary_data_size: give one")
    try:
        data = _flatten(inp.data) if raw[0] is None else binary.decode_bytes_elements(raw[0], max_images)
    except binary.TooManyElements:
        raise ServiceError(
            413, "too_many_images",
            f"input {inp.name!r} holds more than {max_images} images, more than the queue takes at once "
            f"(--max-queue {max_images}); split it into smaller requests",
        ) from None  # fmt: skip
    except binary.BinaryFormatError as e:
        raise ServiceError(400, "invalid_request", f"input {inp.name!r}: {e}") from None
    if any(d < 0 for d in inp.shape) or math.prod(inp.shape) != len(data):
        raise ServiceError(
            400, "invalid_request", f"input {inp.name!r} has shape {inp.shape} but holds {len(data)} elements"
        )
    return inp, data


def _decode_elements(name: str, data: list[Any]) -> list[bytes]:
    """The image files in the elements: raw bytes (binary form) or base64 strings (JSON)."""
    blobs = []
    for i, item in enumerate(data):
        if isinstance(item, bytes):  # binary form: the raw file
            blobs.append(item)
            continue
        if not isinstance(item, str):
            raise ServiceError(400, "invalid_request", f"input {name!r} element {i}: expected a base64 string")
        try:
            blobs.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise ServiceError(400, "invalid_request", f"input {name!r} element {i}: not valid base64") from None
    return blobs


def _infer_response(
    service: Service, payload: S.InferRequest, wanted: list[str], available: dict[str, str], verdicts: list[Verdict]
) -> Response:
    """The outputs asked for, each in JSON or binary form as asked; the request id echoed."""
    n = len(verdicts)
    values = {
        "anomaly_score": [v.anomaly_score for v in verdicts],
        "anomaly_flag": [bool(v.anomaly_flag) for v in verdicts],
        "generated_score": [v.generated_score for v in verdicts],
        "generated_flag": [bool(v.generated_flag) for v in verdicts],
        "in_domain": [v.in_domain is not False for v in verdicts],
        "reasons": [json.dumps(v.reasons) for v in verdicts],
    }
    as_binary = {o.name: _binary_wanted(o.parameters, payload.parameters) for o in payload.outputs or []}
    default_binary = _binary_wanted(None, payload.parameters)
    outputs, binaries = [], []
    for k in wanted:
        out: dict[str, Any] = {"name": k, "shape": [n], "datatype": available[k]}
        if as_binary.get(k, default_binary):
            binaries.append(binary.encode(available[k], values[k]))
            out["parameters"] = {"binary_data_size": len(binaries[-1])}
        else:
            out["data"] = [finite_or_none(x) for x in values[k]]
        outputs.append(out)
    body: dict[str, Any] = {"model_name": service.name, "model_version": service.spec_hash, "outputs": outputs}
    if payload.id is not None:
        body["id"] = payload.id
    if not binaries:
        return JSONResponse(body)
    content, json_length = binary.response_body(body, binaries)
    return Response(content, media_type="application/octet-stream", headers={binary.HEADER: str(json_length)})


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for x in data:
            out.extend(_flatten(x))
        return out
    return [data]


def _number_param(params: dict[str, Any] | None, key: str) -> float | None:
    if not params or key not in params:
        return None
    value = params[key]
    number = finite_float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None:
        raise ServiceError(400, "invalid_request", f"parameter {key!r} must be a finite number, got {shown(repr(value))}")
    return number


def _binary_size(params: dict[str, Any] | None) -> int | None:
    """An input's ``binary_data_size`` (binary tensor data extension), or None when its data is in the JSON."""
    size = (params or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        raise binary.BinaryFormatError(f"binary_data_size must be an integer, got {size!r}")
    return size


def _binary_wanted(output_params: dict[str, Any] | None, request_params: dict[str, Any] | None) -> bool:
    """Whether an output goes back in binary form: its own ``binary_data``, else the request's ``binary_data_output``."""
    if output_params and "binary_data" in output_params:
        return output_params["binary_data"] is True
    return bool(request_params) and request_params.get("binary_data_output") is True  # type: ignore[union-attr]
