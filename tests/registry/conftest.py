"""Registry fixtures: the same suite runs against the filesystem store and a real SeaweedFS."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pifarm.registry.settings import StoreSettings
from tests.support.aggregator import aggregator, aggregator_factory  # noqa: F401  (fixtures)
from tests.support.models import model_path, require_models


@pytest.fixture
def face_model(tmp_path) -> Path:
    """A private copy of a real TFLite model (tests may not write the cached one)."""
    require_models()
    p = tmp_path / "src" / "face.tflite"
    p.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path("face_detection_short_range"), p)
    return p


def s3_settings(seaweed, bucket: str, prefix: str = "farm/a", **kw) -> StoreSettings:
    return StoreSettings(url=f"s3://{bucket}/{prefix}", endpoint_url=seaweed.endpoint, region="us-east-1",
                         access_key_id=seaweed.access_key, secret_access_key=seaweed.secret_key, **kw)


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
def store_settings(request, tmp_path) -> StoreSettings:
    if request.param == "fs":
        return StoreSettings()
    seaweed = request.getfixturevalue("seaweed")
    bucket = request.getfixturevalue("s3_bucket")
    return s3_settings(seaweed, bucket)


@pytest.fixture
def open_registry(tmp_path, store_settings):
    """open_registry(**registry settings) -> Registry on the parametrised store; closed afterwards."""
    from pifarm.registry.service import Registry
    from pifarm.registry.settings import RegistrySettings

    opened = []

    def make(data_dir: Path | None = None, **kw):
        reg = Registry.open(data_dir or tmp_path / "agg", {"registry": RegistrySettings(**kw), "store": store_settings})
        opened.append(reg)
        return reg

    yield make
    for r in opened:
        r.close()


@pytest.fixture
def registry(open_registry):
    return open_registry()
