"""What crosses a test's origin link, beyond what the nodes' reports count."""

from __future__ import annotations

from typing import Any

from node_init.testing import FaultProxy


def s3_listing(proxy: FaultProxy, uri: str) -> tuple[list[Any], int]:
    """The files of ``uri`` on the S3 server behind ``proxy``, and the body bytes one listing of it sends
    through the proxy: what each node's listing adds at the origin link to what its report counts (a
    HEAD has no body, and the proxy counts body bytes only)."""
    from node_init import Bounds, S3Config
    from node_init.download import S3Source

    before = proxy.bytes_sent
    s3 = S3Config(endpoint_url=proxy.endpoint, access_key_id="testing", secret_access_key="testing")
    files = S3Source(uri, s3, bounds=Bounds()).list_files()
    return files, proxy.bytes_sent - before
