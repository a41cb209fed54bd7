"""Pydantic models of the service's requests and responses (they document the OpenAPI schema).

The handlers build plain dicts on the hot path; these models describe them, with examples.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# --------------------------------------------------------------------------- errors


class ErrorResponse(BaseModel):
    """Every error, on every route, has this shape."""

    error: str = Field(description="A stable machine-readable code, e.g. payload_too_large, unauthorized, timeout.")
    detail: str = Field(description="What went wrong and how to fix it, for humans.")

    model_config = ConfigDict(
        json_schema_extra={"example": {"error": "payload_too_large", "detail": "request body is 25 MiB, above the 20 MiB limit (--max-upload-mb); send fewer or smaller files"}}
    )


def _err(description: str, error: str, detail: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": {"error": error, "detail": detail}}},
    }
    if headers:
        out["headers"] = headers
    return out


ERR_401 = _err(
    "API key missing or wrong (only when the server runs with --api-key-env).", "unauthorized",
    "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
)  # fmt: skip
ERR_404_MODEL = _err("No model of that name is served.", "model_not_found", "model 'x' is not served here; it serves 'tiny-zeros'")
ERR_413 = _err(
    "Request body above --max-upload-mb (checked while it streams in), or more images than the queue holds.",
    "payload_too_large", "request body is more than 20 MiB, above the 20 MiB limit (--max-upload-mb); send fewer or smaller files",
)  # fmt: skip
ERR_415 = _err(
    "Unsupported Content-Type.", "unsupported_media_type",
    "Content-Type 'text/plain' is not accepted: send multipart/form-data with one or more 'files' parts, or a raw image/* body",
)  # fmt: skip
ERR_422_DETECT = _err(
    "A raw image/* body that cannot be decoded, a multipart body without 'files' parts, or a bad query parameter.",
    "undecodable_image", "data is not a recognised image (starts with b'hello')",
)  # fmt: skip
ERR_400_DETECT = _err("A multipart body that is not valid multipart.", "invalid_request", "Invalid multipart data.")
ERR_400_INFER = _err(
    "Malformed inference request (bad JSON, tensor shape or datatype, base64, or an undecodable image).",
    "invalid_request", "input 'image' element 1: could not decode PNG data: the file is corrupt or uses a variant OpenCV cannot read",
)  # fmt: skip
ERR_503 = _err(
    "The scoring queue is full (backpressure) or the service is shutting down; retry after Retry-After seconds.",
    "overloaded", "the scoring queue is full (256 of 256 images waiting, this request adds 1); retry after 1 s",
    {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
)  # fmt: skip
ERR_504 = _err("The request took longer than --timeout-s.", "timeout", "the request took longer than 30 s (--timeout-s) and was cancelled")


# --------------------------------------------------------------------------- /v1/detect


class ModelRef(BaseModel):
    name: str = Field(description="The model name stored in the detector file.")
    spec_hash: str = Field(description="Hash of the model spec: changes whenever the model or its thresholds change.")


class ThresholdsOut(BaseModel):
    anomaly: float = Field(description="Anomaly threshold in force (raw anomaly score).")
    generated: Optional[float] = Field(None, description="Generated-probability threshold in force; null without a generated head.")


class DetectResult(BaseModel):
    """One image's verdict. Scores and flags are null when ``status`` is ``error``."""

    filename: Optional[str] = Field(None, description="The multipart file name (raw bodies: from Content-Disposition, else null).")
    status: str = Field(description="ok, or error (the image could not be scored; see error).")
    error: Optional[str] = Field(None, description="Why the image could not be scored.")
    width: Optional[int] = Field(None, description="Decoded image width in pixels.")
    height: Optional[int] = Field(None, description="Decoded image height in pixels.")
    anomaly_score: Optional[float] = Field(None, description="Raw anomaly score (higher = less like the training images).")
    anomaly_percentile: Optional[float] = Field(None, description="Percentile of the score among normal validation images.")
    anomaly_flag: Optional[bool] = Field(None, description="anomaly_score > the anomaly threshold.")
    anomaly_probability: Optional[float] = Field(None, description="Calibrated probability of an anomaly, when the model is calibrated.")
    generated_score: Optional[float] = Field(None, description="Probability that the image is generated; null without a generated head.")
    generated_flag: Optional[bool] = Field(None, description="generated_score > the generated threshold; null without a generated head.")
    flagged: bool = Field(False, description="anomaly_flag or generated_flag.")
    components: dict[str, float] = Field(default_factory=dict, description="Component scores (e.g. pixel_residual, feature_residual, disc_logit).")
    in_domain: Optional[bool] = Field(
        None,
        description="The domain gate: false = out of the model's training domain, so the generated verdict abstains "
        "(generated_score and generated_flag are null) and the image is reported as anomalous; null when the model "
        "has no gate or the server runs with --no-domain-gate.",
    )
    domain_score: Optional[float] = Field(None, description="The score the domain gate compares with its limit (null when not gated).")
    reasons: list[str] = Field(default_factory=list, description="Short sentences for a moderator: which head fired, scores against thresholds, the percentile in words, the domain gate.")
    generated_map: Optional[str] = Field(
        None,
        description="With include_map=true, for images flagged as generated: base64 PNG map of the generated head's "
        "evidence per window (inferno colormap, black = no evidence, yellow = the window carrying the most).",
    )
    anomaly_map: Optional[str] = Field(
        None,
        description="With include_map=true: base64 PNG heat map at model resolution (inferno colormap, "
        "0 = black to >= 1 = yellow, where 1 is twice the peak of a typical normal image's map).",
    )


class DetectResponse(BaseModel):
    model: ModelRef
    thresholds: ThresholdsOut
    results: list[DetectResult] = Field(description="One result per file, in request order.")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model": {"name": "tiny-zeros", "spec_hash": "3f9c1a2b4d5e6f70"},
                "thresholds": {"anomaly": 0.7412, "generated": None},
                "results": [
                    {
                        "filename": "zero.png", "status": "ok", "error": None, "width": 28, "height": 28,
                        "anomaly_score": 0.5121, "anomaly_percentile": 41.0, "anomaly_flag": False,
                        "anomaly_probability": None, "generated_score": None, "generated_flag": None, "flagged": False,
                        "components": {"disc_logit": 1.92, "pixel_residual": 0.31, "feature_residual": 0.2},
                        "in_domain": None, "domain_score": None,
                        "reasons": ["Passed: no head fired.", "Anomaly head did not fire: score 0.512 is not above its threshold 0.741.",
                                    "The image is stranger than 41.0 % of normal images (anomaly percentile 41.0)."],
                        "generated_map": None, "anomaly_map": None,
                    },
                    {
                        "filename": "broken.png", "status": "error",
                        "error": "truncated PNG: the data ends before the IEND chunk (the file was cut off)",
                        "width": None, "height": None, "anomaly_score": None, "anomaly_percentile": None,
                        "anomaly_flag": None, "anomaly_probability": None, "generated_score": None,
                        "generated_flag": None, "flagged": False, "components": {}, "in_domain": None,
                        "domain_score": None, "reasons": ["Not scored: truncated PNG: the data ends before the IEND chunk (the file was cut off)"],
                        "generated_map": None, "anomaly_map": None,
                    },
                ],
            }
        }
    )  # fmt: skip


# --------------------------------------------------------------------------- Open Inference Protocol (KServe v2)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)

    model_config = ConfigDict(json_schema_extra={"example": {"name": "ganaudit", "version": "0.1.0", "extensions": []}})


class LiveResponse(BaseModel):
    live: bool

    model_config = ConfigDict(json_schema_extra={"example": {"live": True}})


class ReadyResponse(BaseModel):
    ready: bool

    model_config = ConfigDict(json_schema_extra={"example": {"ready": True}})


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool

    model_config = ConfigDict(json_schema_extra={"example": {"name": "tiny-zeros", "ready": True}})


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(default_factory=list, description="One entry: the model's spec_hash (versioned routes are not served).")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "tiny-zeros", "versions": ["3f9c1a2b4d5e6f70"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [
                    {"name": "anomaly_score", "datatype": "FP32", "shape": [-1]},
                    {"name": "anomaly_flag", "datatype": "BOOL", "shape": [-1]},
                ],
            }
        }
    )  # fmt: skip


TensorData = list[Any]
Parameters = dict[str, Union[str, int, float, bool]]


class RequestInput(BaseModel):
    name: str = Field(description="Any name; the model takes one input (its metadata calls it 'image').")
    shape: list[StrictInt] = Field(description="[N] (or [N, 1]): N images.", min_length=1, max_length=2)
    datatype: str = Field(description="Must be BYTES.")
    parameters: Optional[Parameters] = None
    data: Optional[TensorData] = Field(
        None,
        description="The encoded image files (PNG, JPEG, ...), base64, row-major (nesting allowed); left out when "
        "parameters.binary_data_size puts them, raw, after the JSON (binary tensor data extension).",
    )


class RequestOutput(BaseModel):
    name: str
    parameters: Optional[Parameters] = None


class InferRequest(BaseModel):
    id: Optional[str] = Field(None, description="Echoed back in the response.")
    parameters: Optional[Parameters] = Field(
        None, description="Optional anomaly_threshold and generated_threshold (numbers) override the model's thresholds."
    )
    inputs: list[RequestInput]
    outputs: Optional[list[RequestOutput]] = Field(None, description="Outputs to return (default: all).")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "req-42",
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["iVBORw0KGgoAAAANSUhEUgAA..."]}],
            }
        }
    )  # fmt: skip


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[Parameters] = None
    data: Optional[TensorData] = Field(None, description="Left out for an output sent in binary form (parameters.binary_data_size).")


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = Field(None, description="The model's spec_hash.")
    id: Optional[str] = None
    parameters: Optional[Parameters] = None
    outputs: list[ResponseOutput]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model_name": "tiny-zeros", "model_version": "3f9c1a2b4d5e6f70", "id": "req-42",
                "outputs": [
                    {"name": "anomaly_score", "shape": [1], "datatype": "FP32", "data": [0.5121]},
                    {"name": "anomaly_flag", "shape": [1], "datatype": "BOOL", "data": [False]},
                ],
            }
        }
    )  # fmt: skip
