"""Test setup: Keras 2 before TensorFlow is imported, and shared fixtures."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``autorecsys ARGS`` in a fresh Python process (nothing warm from the test process)."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, env=env, check=False, cwd=REPO_ROOT)
