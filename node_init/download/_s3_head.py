"""S3 HEAD requests that return what obstore's metadata leaves out: checksums, encryption, part sizes.

obstore 0.12's ``head`` carries no ``x-amz-checksum-*``, encryption or part headers, so each file's
HEAD goes through another client. With static keys (the node's environment or the config) or no
signature at all, the request is signed here with ``awscrt``'s SigV4 (already a dependency, for the
CRCs) and sent with urllib3: importing and building a boto3 client costs ~0.36 CPU-seconds per
process, as much as fetching a 256 MB shard. Only the credential chain (profiles, SSO, web
identity, instance roles) goes through boto3, which resolves it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlparse

from .._config import reveal


class HeadFailed(OSError):
    """A HEAD answered with an error status."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(f"HEAD {key}: HTTP {status}")
        self.status = status


#: ``head(key, part_number, if_match) -> the response's headers, names in lower case``
Head = Callable[[str, "int | None", "str | None"], Mapping[str, str]]


def s3_head(*, bucket: str, endpoint: str | None, region: str, auth: Mapping[str, object], timeout_s: float,
            retries: int) -> Head:
    """A HEAD for objects of ``bucket``, signed as the source's reads are (``auth``: S3Store arguments)."""
    if "credential_provider" in auth:
        return _boto3_head(bucket=bucket, endpoint=endpoint, region=region, timeout_s=timeout_s, retries=retries)
    return _SignedHead(bucket, endpoint, region, auth, timeout_s, retries)


class _SignedHead:
    def __init__(self, bucket: str, endpoint: str | None, region: str, auth: Mapping[str, object],
                 timeout_s: float, retries: int) -> None:
        import urllib3

        if endpoint:  # path style, as the reads use for a custom endpoint
            url = urlparse(endpoint)
            self._base, self._host, self._prefix = f"{url.scheme}://{url.netloc}", url.netloc, f"/{bucket}"
        else:
            host = f"{bucket}.s3.{region}.amazonaws.com"
            self._base, self._host, self._prefix = f"https://{host}", host, ""
        self._region = region
        self._keys = None if auth.get("skip_signature") else (
            str(auth["access_key_id"]), reveal(str(auth["secret_access_key"])),
            str(auth["session_token"]) if auth.get("session_token") else None)
        self._pool = urllib3.PoolManager(
            maxsize=16, timeout=urllib3.Timeout(connect=min(10.0, timeout_s), read=timeout_s),
            retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=(429, 500, 502, 503, 504),
                                  allowed_methods=None, raise_on_status=False))
        self._signing: Any = None
        self._lock = threading.Lock()

    def _config(self) -> Any:
        from awscrt import auth

        with self._lock:
            if self._signing is None and self._keys is not None:
                key_id, secret, token = self._keys
                self._signing = auth.AwsSigningConfig(
                    algorithm=auth.AwsSigningAlgorithm.V4, signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
                    credentials_provider=auth.AwsCredentialsProvider.new_static(key_id, secret, token),
                    region=self._region, service="s3", use_double_uri_encode=False, should_normalize_uri_path=False,
                    signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
                    signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256)
            return self._signing

    def __call__(self, key: str, part_number: int | None = None, if_match: str | None = None) -> Mapping[str, str]:
        from awscrt import auth, http

        path = f"{self._prefix}/{quote(key, safe='/~')}" + (f"?partNumber={part_number}" if part_number else "")
        headers = [("host", self._host), ("x-amz-checksum-mode", "ENABLED")]
        if if_match:
            headers.append(("if-match", if_match))
        request = http.HttpRequest("HEAD", path, http.HttpHeaders(headers))
        config = self._config()
        if config is not None:
            auth.aws_sign_request(request, config).result(timeout=30)
        response = self._pool.request("HEAD", self._base + path, headers=dict(request.headers), redirect=False)
        if response.status >= 300:
            raise HeadFailed(response.status, key)
        return {k.lower(): v for k, v in response.headers.items()}


def _boto3_head(*, bucket: str, endpoint: str | None, region: str, timeout_s: float, retries: int) -> Head:
    import boto3
    import botocore.config

    config = botocore.config.Config(
        connect_timeout=min(10.0, timeout_s), read_timeout=timeout_s,
        retries={"max_attempts": retries + 1, "mode": "standard"}, max_pool_connections=16,
        s3={"addressing_style": "path"} if endpoint else None)
    client = boto3.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def head(key: str, part_number: int | None = None, if_match: str | None = None) -> Mapping[str, str]:
        extra: dict[str, Any] = {"PartNumber": part_number} if part_number else {}
        if if_match:
            extra["IfMatch"] = if_match
        response = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra)
        return {k.lower(): v for k, v in response["ResponseMetadata"]["HTTPHeaders"].items()}

    return head
