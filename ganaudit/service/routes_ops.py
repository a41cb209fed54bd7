"""Operations routes: ``GET /metrics`` (Prometheus text format). The health probes are the KServe v2 ones."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from . import schemas as S
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .state import Service, get_service

router = APIRouter()

@router.get(
    "/metrics",
    tags=["metrics"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {METRICS_CONTENT_TYPE: {"example": "ganaudit_http_requests_total{method=\"POST\",route=\"/v1/detect\",status=\"200\"} 12\n"}},
              "description": "Prometheus text exposition format 0.0.4."},
        401: S.ERR_401,
    },
)  # fmt: skip
async def metrics(service: Annotated[Service, Depends(get_service)]) -> Response:
    return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)
