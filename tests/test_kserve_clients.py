"""Real KServe v2 clients: tritonclient.http against a real `ganaudit serve` on 127.0.0.1.

JSON and binary (the binary tensor data extension, tritonclient's default), inputs and outputs, several
images, and one bad image in the batch. The shipped digits model and the demo images stand for real use.
"""

from __future__ import annotations

import json
from base64 import b64encode
from pathlib import Path

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from ganaudit.runtime.detector import Detector  # noqa: E402

from .test_examples import server  # noqa: E402,F401 - the real `ganaudit serve` fixture

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "images"
FILES = [DEMO / "normal" / "digit0_mnist8007.png", DEMO / "generated" / "gan_digit_00.png",
         DEMO / "anomalies" / "photo_cat.png"]  # fmt: skip


@pytest.fixture()
def client(server):
    """tritonclient.http on the real `ganaudit serve` (the shipped default model) of test_examples."""
    c = httpclient.InferenceServerClient(url=server.split("://", 1)[1], network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def expected():
    return Detector.load(ROOT / "ganaudit" / "models" / "digits.onnx").detect([str(f) for f in FILES])


def images_input(binary: bool, blobs: list[bytes]):
    inp = httpclient.InferInput("image", [len(blobs)], "BYTES")
    data = blobs if binary else [b64encode(b).decode() for b in blobs]
    inp.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    return inp


def check(result, expected) -> None:
    np.testing.assert_allclose(result.as_numpy("anomaly_score"), [v.anomaly_score for v in expected], rtol=1e-5)
    assert result.as_numpy("anomaly_flag").tolist() == [v.anomaly_flag for v in expected]
    gen = result.as_numpy("generated_score")
    for g, v in zip(gen, expected):
        assert (np.isnan(g) and v.generated_score is None) or g == pytest.approx(v.generated_score, rel=1e-5)
    assert result.as_numpy("generated_flag").tolist() == [bool(v.generated_flag) for v in expected]
    assert result.as_numpy("in_domain").tolist() == [v.in_domain for v in expected]
    reasons = [json.loads(r.decode() if isinstance(r, bytes) else r) for r in result.as_numpy("reasons")]
    assert reasons == [v.reasons for v in expected]


def test_server_metadata_lists_the_binary_extension(client):
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    outputs = {o["name"] for o in client.get_model_metadata("digits")["outputs"]}
    assert {"anomaly_score", "generated_score", "in_domain", "reasons"} <= outputs


def test_tritonclient_scores_several_images_json_and_binary_both_ways(client, expected):
    blobs = [f.read_bytes() for f in FILES]
    names = ["anomaly_score", "anomaly_flag", "generated_score", "generated_flag", "in_domain", "reasons"]
    for binary_in in (True, False):
        for binary_out in (True, False, None):  # None: tritonclient's default (asks for binary outputs)
            outputs = None if binary_out is None else [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in names]
            result = client.infer("digits", [images_input(binary_in, blobs)], outputs=outputs, request_id="r1")
            assert result.get_response()["id"] == "r1"
            check(result, expected)
            sent = [o for o in result.get_response()["outputs"] if "binary_data_size" in (o.get("parameters") or {})]
            assert bool(sent) == (binary_out is not False), (binary_in, binary_out)


def test_one_bad_image_fails_the_request_with_a_clear_message(client):
    blobs = [FILES[0].read_bytes(), b"this is not an image", FILES[1].read_bytes()]
    for binary_in in (True, False):
        with pytest.raises(InferenceServerException) as err:
            client.infer("digits", [images_input(binary_in, blobs)])
        assert "invalid_request: input 'image' element 1" in str(err.value)  # tritonclient shows the reason
        # The server is still fine for the next request.
        assert client.infer("digits", [images_input(binary_in, blobs[:1])]).as_numpy("anomaly_score").shape == (1,)
