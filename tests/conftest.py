"""Shared fixtures: real servers on 127.0.0.1 (S3 via moto's server mode; HTTP in tests/http_server.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Real third-party data from ../shared/data. A fresh clone has none: then some tests skip and `real_images` falls
# back to the photos PyPI wheels ship. WIT_SHARED_DATA=/nonexistent runs the suite as it runs there (.ci/run does,
# for the tests marked `data_fallback`).
SHARED_DATA = Path(os.environ.get("WIT_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def pytest_configure(config):
    config.addinivalue_line("markers", "data_fallback: uses real_images, whose data differs without ../shared/data")


def pytest_collection_modifyitems(items):
    for item in items:
        if "real_images" in getattr(item, "fixturenames", ()):  # directly or through image_server, crawl, ...
            item.add_marker(pytest.mark.data_fallback)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (real third-party data in ../shared/data), which is missing here")
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint on 127.0.0.1 (moto server mode); yields its endpoint URL.

    The environment points fsspec/s3fs and img2dataset at it through AWS_ENDPOINT_URL.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server, request):
    """A fresh bucket on the loopback S3 server; yields `s3://<bucket>`."""
    import s3fs

    name = "wit-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def real_images() -> dict[str, bytes]:
    """Real photos: 40 from Flickr8k in ../shared/data when present, else the 15 that scikit-image/-learn ship."""
    folder = SHARED_DATA / "flickr8k" / "images"
    if folder.is_dir():
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:40]}
    from wit.ingest.sample_images import package_photos

    return package_photos()


@pytest.fixture()
def image_server(real_images):
    """A loopback HTTP server over the real images, with fault routes (see ingest/loopback.py)."""
    from wit.ingest.loopback import LoopbackImageServer

    with LoopbackImageServer(real_images, slow_seconds=4.0, endless_seconds=8.0) as server:
        yield server


def write_csv(path: Path, rows, header=("url", "caption")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(autouse=True)
def _no_ray_left_running():
    """A test that started Ray in this process (an engine="ray" stage initialises it and leaves it up) must not hand
    that instance to the next test of the same xdist worker: a test that starts its own with its own resources then
    fails with "ray.init twice" (it did in CI's order, not alone)."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()

