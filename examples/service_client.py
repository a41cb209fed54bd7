"""Call a running `ganaudit serve` through both of its APIs: the native /v1/detect and KServe v2 infer.

    ganaudit serve &                                     # the shipped default model on 127.0.0.1:8000
    python examples/service_client.py                    # a few demo images
    python examples/service_client.py a.png b.jpg --url http://127.0.0.1:8000 --api-key-env GANAUDIT_API_KEY

The native API and the plain-JSON KServe call use the standard library only (urllib), so they run anywhere
Python does. When ``tritonclient[http]`` is installed (``pip install "tritonclient[http]"``), the KServe call
is also made with tritonclient, the standard KServe v2 client, as it works by default: image files sent raw
and outputs received as binary tensors (the binary tensor data extension). With ``--json`` it prints the
answers as one JSON object instead of the readable summary.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parent / "images"
DEFAULT_IMAGES = [
    DEMO / "normal" / "digit3_mnist8010.png",
    DEMO / "anomalies" / "photo_cat.png",
    DEMO / "anomalies" / "texture_brick.png",
    DEMO / "generated" / "gan_digit_00.png",
]


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:  # the service answers {"error": code, "detail": what to do}
            raise SystemExit(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None

    def wait_ready(self, seconds: float = 30.0) -> None:
        """Poll the KServe readiness probe: 200 once the model is loaded and warmed up."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.url} is not ready after {seconds:.0f}s: is `ganaudit serve` running?")
            time.sleep(0.25)

    def detect(self, paths: list[Path], include_map: bool = True) -> dict[str, Any]:
        """POST /v1/detect: multipart/form-data with one ``files`` part per image."""
        boundary = uuid.uuid4().hex
        parts = []
        for p in paths:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{p.name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        query = "?include_map=true" if include_map else ""
        return self.request("POST", "/v1/detect" + query, body, f"multipart/form-data; boundary={boundary}")

    def infer(self, model: str, paths: list[Path], request_id: str = "example-1") -> dict[str, Any]:
        """POST /v2/models/{model}/infer: one BYTES input of base64-encoded image files (Open Inference Protocol)."""
        payload = {
            "id": request_id,
            "inputs": [{
                "name": "image", "shape": [len(paths)], "datatype": "BYTES",
                "data": [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths],
            }],
        }  # fmt: skip
        return self.request("POST", f"/v2/models/{model}/infer", json.dumps(payload).encode(), "application/json")


def infer_with_tritonclient(url: str, model: str, paths: list[Path], api_key: str | None) -> dict[str, list] | None:
    """The same KServe v2 call made with tritonclient.http and its defaults (binary data both ways), or None
    when tritonclient is not installed."""
    try:
        import numpy as np
        import tritonclient.http as httpclient
    except ImportError:
        return None
    host = url.split("://", 1)[-1].rstrip("/")
    client = httpclient.InferenceServerClient(url=host, ssl=url.startswith("https://"))
    image = httpclient.InferInput("image", [len(paths)], "BYTES")
    image.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=object))  # raw files, binary_data=True
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    result = client.infer(model, [image], headers=headers)
    out = {}
    for o in result.get_response()["outputs"]:
        values = result.as_numpy(o["name"])
        out[o["name"]] = [v.decode() if isinstance(v, bytes) else None if v != v else v.item() for v in values]
    client.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="Call ganaudit serve's /v1/detect and KServe v2 infer endpoints.")
    ap.add_argument("images", nargs="*", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key-env", default=None, help="environment variable holding the API key, if auth is on")
    ap.add_argument("--json", action="store_true", help="print both raw answers as one JSON object")
    args = ap.parse_args()

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    client = Client(args.url, api_key)
    client.wait_ready()

    native = client.detect(args.images)
    model = native["model"]["name"]
    oip = client.infer(model, args.images)
    triton = infer_with_tritonclient(args.url, model, args.images, api_key)
    if args.json:
        print(json.dumps({"detect": native, "infer": oip, "tritonclient": triton}))
        return 0

    print(f"POST /v1/detect -> model {model!r} (spec {native['model']['spec_hash']}), thresholds {native['thresholds']}")
    for r in native["results"]:
        if r["status"] != "ok":
            print(f"  {r['filename']}: error: {r['error']}")
            continue
        gen = "" if r["generated_score"] is None else f", generated {r['generated_score']:.2f}"
        heat = f", heat map PNG {len(base64.b64decode(r['anomaly_map']))} bytes" if r.get("anomaly_map") else ""
        print(f"  {r['filename']}: {'FLAGGED' if r['flagged'] else 'ok'}, anomaly {r['anomaly_score']:.3f} "
              f"(percentile {r['anomaly_percentile']}){gen}{heat}")  # fmt: skip
        for reason in r["reasons"]:
            print(f"      - {reason}")
    outputs = {o["name"]: o["data"] for o in oip["outputs"] if o["name"] != "reasons"}
    print(f"POST /v2/models/{model}/infer -> id {oip['id']}, version {oip['model_version']}")
    for i, p in enumerate(args.images):
        row = ", ".join(f"{name} {values[i]:.3f}" if isinstance(values[i], float) else f"{name} {values[i]}"
                        for name, values in outputs.items())  # fmt: skip
        print(f"  {p.name}: {row}")
    if triton is None:
        print('tritonclient: not installed (pip install "tritonclient[http]" to try the standard KServe client)')
    else:
        print(f"tritonclient.http infer (binary tensors) -> outputs {', '.join(triton)}")
        for i, p in enumerate(args.images):
            print(f"  {p.name}: anomaly_score {triton['anomaly_score'][i]:.3f}, generated_score {triton.get('generated_score', [None] * len(args.images))[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
