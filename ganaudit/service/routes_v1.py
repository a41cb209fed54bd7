"""The native API: ``POST /v1/detect`` (multipart ``files`` or a raw ``image/*`` body -> one result per image)."""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any, Optional

import cv2
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from ..runtime import evidence
from ..core.grid import encode_png
from ..core.errors import ImageDecodeError
from ..runtime.detector import RECORD_FIELDS, Verdict, error_verdict, finite_or_none, verdict_record
from . import schemas as S
from .errors import ServiceError
from .state import Service, get_service, media_type

router = APIRouter()

_DETECT_BODY = {
    "requestBody": {
        "required": True,
        "description": "Either multipart/form-data with one or more parts named `files`, or one raw image with "
        "Content-Type image/* (image/png, image/jpeg, ...).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,  # a body without a files part is answered 422: the schema says so too
                            "items": {"type": "string", "format": "binary"},
                            "description": "Image files (PNG, JPEG, BMP, WEBP, TIFF, GIF).",
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
def heatmap_png(anomaly_map: np.ndarray) -> bytes:
    """The anomaly map as a color PNG: inferno colormap, 0 -> black, >= 1 -> yellow."""
    u8 = np.clip(np.nan_to_num(np.asarray(anomaly_map, np.float32)) * 255.0, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO)
    return encode_png(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


# Verdict fields a result carries, in order: components last, before the maps.
_RESULT_FIELDS = tuple(f for f in RECORD_FIELDS if f not in ("source", "components")) + ("components",)


def _result(filename: str | None, v: Verdict) -> dict[str, Any]:
    d: dict[str, Any] = {"filename": filename, **verdict_record(v, _RESULT_FIELDS)}
    d["anomaly_map"] = base64.b64encode(heatmap_png(v.anomaly_map)).decode() if v.anomaly_map is not None else None
    gm = v.generated_map
    d["generated_map"] = None if gm is None else base64.b64encode(heatmap_png(evidence.for_display(gm))).decode()
    return d


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    m = re.search(r'filename="?([^";]+)"?', header)
    return m.group(1) if m else None


@router.post(
    "/v1/detect",
    response_model=S.DetectResponse,
    tags=["detect"],
    summary="Score one or more images",
    responses={
        400: S.ERR_400_DETECT,
        401: S.ERR_401, 413: S.ERR_413, 415: S.ERR_415, 422: S.ERR_422_DETECT, 503: S.ERR_503, 504: S.ERR_504,
    },  # fmt: skip
    openapi_extra=_DETECT_BODY,
)
async def detect(
    request: Request,
    service: Annotated[Service, Depends(get_service)],
    anomaly_threshold: Annotated[
        Optional[float], Query(description="Override the anomaly threshold (raw score) for this request.", allow_inf_nan=False)
    ] = None,
    generated_threshold: Annotated[
        Optional[float],
        Query(description="Override the generated-probability threshold (0 to 1) for this request.", allow_inf_nan=False,
              ge=0.0, le=1.0),
    ] = None,
    include_map: Annotated[bool, Query(description="Add a base64 PNG heat map to each result.")] = False,
) -> Response:
    """Multipart `files` (one or more) give one result per file, in order; a file that cannot be decoded (or
    is over the pixel limit) gives a result with `status: "error"` and does not fail the request. A raw
    `image/*` body gives a single result, or 422 when the image cannot be decoded."""
    media = media_type(request)
    thresholds = service.thresholds(anomaly_threshold, generated_threshold)
    if media == "multipart/form-data":
        names, blobs, text_parts = await _read_multipart(request, service.settings.max_files)
        service.check_capacity(len(blobs))
        prepared = await service.decode(blobs, request.is_disconnected)
        for i in text_parts:
            prepared[i] = ImageDecodeError(TEXT_PART)
    elif media.startswith("image/"):
        names = [_disposition_filename(request.headers.get("content-disposition"))]
        prepared = await service.decode([await request.body()], request.is_disconnected)
        if isinstance(prepared[0], Exception):
            service.metrics.count_verdicts([error_verdict(None, prepared[0])])
            raise ServiceError(422, "undecodable_image", str(prepared[0]))
    else:
        shown = media or "(none)"
        raise ServiceError(
            415, "unsupported_media_type",
            f"Content-Type {shown!r} is not accepted: send multipart/form-data with one or more 'files' parts, "
            "or a raw image/* body",
        )  # fmt: skip
    verdicts = await service.score(prepared, thresholds, include_map)
    body = {
        "model": service.model_ref(),
        "thresholds": {"anomaly": finite_or_none(thresholds.anomaly), "generated": finite_or_none(thresholds.generated)},
        "results": [_result(n, v) for n, v in zip(names, verdicts)],
    }
    return JSONResponse(body)


TEXT_PART = (
    "this 'files' part is a text field, not a file: give it a file name (Content-Disposition: form-data; "
    'name="files"; filename="image.png"); filename* is not read'
)


async def _read_multipart(request: Request, max_files: int) -> tuple[list[str | None], list[bytes], list[int]]:
    """The ``files`` parts of a multipart body: names, bytes and the positions of parts that came as text
    fields (no ``filename``), which get an error result (spooled uploads are closed here)."""
    form = await request.form(max_files=max_files, max_fields=max_files)
    try:
        names: list[str | None] = []
        blobs: list[bytes] = []
        text_parts: list[int] = []
        for key, value in form.multi_items():
            if key != "files":
                continue
            if isinstance(value, UploadFile):
                names.append(value.filename)
                blobs.append(await value.read())
            else:  # a text field named files (no filename): keep its place for an error result
                text_parts.append(len(blobs))
                names.append(None)
                blobs.append(b"")
        if not blobs:
            raise ServiceError(
                422, "invalid_request", "the multipart body has no 'files' part: send images as files=@image.png"
            )
        return names, blobs, text_parts
    finally:
        await form.close()
