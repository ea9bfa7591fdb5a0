"""The S3 HEAD that asks for checksums: signed here with awscrt's SigV4, proved against botocore's signer."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from node_init import Bounds
from node_init.download import HeadFailed, s3_head


class _Capture(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, dict[str, str]]] = []

    def do_HEAD(self) -> None:
        type(self).seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        status = 404 if "missing" in self.path else 200
        self.send_response(status)
        self.send_header("x-amz-checksum-crc64nvme", "AAAAAAAAAAA=")
        self.send_header("Content-Length", "7")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[str]:
    _Capture.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_the_head_is_signed_as_botocore_signs_it(capture: str) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    head = s3_head(bucket="models", endpoint=capture, region="eu-west-1", bounds=Bounds(stall_s=5, retries=0),
                   auth={"access_key_id": "AKIDTEST", "secret_access_key": "s3cr3t/+key", "session_token": "tok"})
    headers = head("dir/a b+c.safetensors", 2, '"etag-1"')
    assert headers["x-amz-checksum-crc64nvme"] == "AAAAAAAAAAA="
    (path, sent), = _Capture.seen
    assert path == "/models/dir/a%20b%2Bc.safetensors?partNumber=2"
    # botocore signs the same request at the same instant, the body unsigned as here: its signature must be ours.
    request = AWSRequest(method="HEAD", url=capture.replace("http://", "https://") + path, headers={
        "x-amz-checksum-mode": "ENABLED", "if-match": '"etag-1"'})
    request.context.update(timestamp=sent["x-amz-date"],
                           client_config=Config(s3={"payload_signing_enabled": False}))
    signer = S3SigV4Auth(Credentials("AKIDTEST", "s3cr3t/+key", "tok"), "s3", "eu-west-1")
    signer._modify_request_before_signing(request)  # the headers botocore adds before it signs
    ours = dict(sent)
    assert signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request) == \
        ours["authorization"].rsplit("Signature=", 1)[1]
    assert ours["x-amz-security-token"] == "tok" and "s3cr3t" not in str(ours)


def test_an_unsigned_head_and_an_error_status(capture: str) -> None:
    head = s3_head(bucket="models", endpoint=capture, region="us-east-1", auth={"skip_signature": True},
                   bounds=Bounds(stall_s=5, retries=0))
    head("w.bin", None, None)
    assert "authorization" not in _Capture.seen[-1][1]
    with pytest.raises(HeadFailed) as info:
        head("missing.bin", None, None)
    assert info.value.status == 404
