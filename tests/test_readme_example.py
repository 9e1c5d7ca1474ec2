"""The README's plain-Keras example runs as written and learns its planted interaction."""

import os
import re

from tests.conftest import REPO_ROOT


def _example_code() -> str:
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    block = re.search(r"<!-- readme-example:start -->\n```python\n(.*?)```\n"
                      r"<!-- readme-example:end -->", readme, re.S)
    assert block, "README example block not found"
    return block.group(1)


def test_readme_example_builds_trains_and_saves_without_tfx(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_example_code(), "README.md", "exec"), namespace)  # noqa: S102
    assert os.path.exists(tmp_path / "deepfm_model" / "saved_model.pb")
    assert namespace["history"].history["auc"][-1] > 0.8
    features = namespace["features"]
    sample = {k: v[:16] for k, v in features.items()}
    original = namespace["model"].predict(sample, verbose=0)
    restored = namespace["restored"].predict(sample, verbose=0)
    assert abs(original - restored).max() < 1e-5
