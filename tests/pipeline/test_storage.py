"""``pipeline.storage``: a run's files on local disk or at a URI (``ram://`` stands in for
``gs://``; both go through ``tf.io.gfile``)."""

import os

import pytest
import tensorflow as tf

import tests.e2e.ramfs  # noqa: F401 (ram:// for Beam: check_storage asks Beam for the scheme)
from pipeline import storage
from pipeline.configs import ConfigError, PipelineConfig
from pipeline.run import run_paths


def _examples(tmp_path, text: str = "rows") -> str:
    local = tmp_path / "examples"
    for split in ("train", "eval", "test"):
        (local / split).mkdir(parents=True, exist_ok=True)
        (local / split / "data.tfrecord").write_text(f"{split} {text}")
    return str(local)


def test_is_local():
    assert storage.is_local("/tmp/x") and storage.is_local("runs/x")
    assert storage.is_local("file:///tmp/x")
    assert not storage.is_local("gs://bucket/x") and not storage.is_local("ram://b/x")


def test_run_paths_put_artifacts_under_the_root_and_mlmd_locally():
    local = run_paths("/tmp/out")
    assert local.pipeline_root == "/tmp/out/pipeline"
    assert local.serving_dir == "/tmp/out/serving"
    remote = run_paths("/tmp/out", "gs://bucket/run")
    assert remote.examples_dir == "gs://bucket/run/examples"
    assert remote.pipeline_root == "gs://bucket/run/pipeline"
    assert remote.serving_dir == "gs://bucket/run/serving"
    assert remote.metadata_path == "/tmp/out/metadata.sqlite"


def test_publish_examples_names_the_folder_by_content_and_marks_it_complete(tmp_path):
    root = f"ram://storage-publish-{tmp_path.name}/examples"
    first = storage.publish_examples(_examples(tmp_path), root)
    assert first.startswith(root + "/")
    assert tf.io.gfile.exists(os.path.join(first, storage.COMPLETE_MARKER))
    assert storage.read_text(os.path.join(first, "train", "data.tfrecord")) == "train rows"
    # the same content: the same folder, not copied again
    tf.io.gfile.remove(os.path.join(first, "eval", "data.tfrecord"))
    assert storage.publish_examples(_examples(tmp_path), root) == first
    assert not tf.io.gfile.exists(os.path.join(first, "eval", "data.tfrecord"))
    # new content: a new folder; the old one is left to the runs that used it
    second = storage.publish_examples(_examples(tmp_path, "changed"), root)
    assert second != first
    assert storage.read_text(os.path.join(second, "test", "data.tfrecord")) == "test changed"


def test_publish_examples_copies_again_into_a_folder_without_the_marker(tmp_path):
    root = f"ram://storage-cutoff-{tmp_path.name}/examples"
    local = _examples(tmp_path)
    cut_off = os.path.join(root, storage.tree_digest(local))
    storage.write_text(os.path.join(cut_off, "train", "data.tfrecord"), "half")
    assert storage.publish_examples(local, root) == cut_off
    assert storage.read_text(os.path.join(cut_off, "train", "data.tfrecord")) == "train rows"
    assert storage.read_text(os.path.join(cut_off, "test", "data.tfrecord")) == "test rows"
    assert tf.io.gfile.exists(os.path.join(cut_off, storage.COMPLETE_MARKER))


def test_local_dir_for_copies_to_a_uri_only_when_the_block_completes(tmp_path):
    uri = f"ram://storage-local-dir-{tmp_path.name}/report"
    with storage.local_dir_for(uri) as local:
        assert os.path.isdir(local)
        with open(os.path.join(local, "a.json"), "w") as f:
            f.write("{}")
        os.makedirs(os.path.join(local, "sub"))
        with open(os.path.join(local, "sub", "b.png"), "wb") as f:
            f.write(b"png")
    assert storage.read_text(uri + "/a.json") == "{}"
    assert storage.read_text(uri + "/sub/b.png") == "png"
    assert not os.path.exists(local)  # the staging folder is gone

    failed = f"ram://storage-local-dir-{tmp_path.name}/failed"
    with pytest.raises(RuntimeError), storage.local_dir_for(failed) as local:
        with open(os.path.join(local, "a.json"), "w") as f:
            f.write("{}")
        raise RuntimeError("the search failed")
    assert not tf.io.gfile.exists(failed + "/a.json")

    on_disk = str(tmp_path / "report")
    with storage.local_dir_for(on_disk) as local:
        assert local == on_disk and os.path.isdir(on_disk)


def test_artifact_root_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="artifact_root"):
        PipelineConfig.from_dict({"artifact_root": " "}).validate()
    with pytest.raises(ConfigError, match="artifact_root"):
        PipelineConfig.from_dict({"artifact_root": 3}).validate()
    out = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"runner dataflow: .* \(gs://bucket/path\)"):
        PipelineConfig.from_dict({"runner": "dataflow", "output_dir": out}).check_storage()
    with pytest.raises(ConfigError, match="runner dataflow"):
        PipelineConfig.from_dict(
            {"runner": "dataflow", "artifact_root": "/tmp/run", "output_dir": out}).check_storage()
    config = PipelineConfig.from_dict({"artifact_root": f"file://{tmp_path}/root",
                                       "output_dir": out})
    config.check_storage()
    assert config.artifact_root == f"{tmp_path}/root"  # file:// dropped, a plain local path
    assert (tmp_path / "root" / storage.OWNER_FILE).read_text().strip() == out


def test_an_artifact_root_belongs_to_one_output_dir(tmp_path):
    root = f"ram://storage-owner-{tmp_path.name}/run"
    first = PipelineConfig.from_dict({"artifact_root": root, "output_dir": str(tmp_path / "a")})
    first.check_storage()
    first.check_storage()  # the same run again: fine
    other = PipelineConfig.from_dict({"artifact_root": root, "output_dir": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match=f"holds the artifacts of the run in {tmp_path}/a"):
        other.check_storage()


def test_a_root_that_cannot_be_written_fails_before_anything_is_prepared(tmp_path):
    from pipeline.cli import main  # noqa: PLC0415
    from pipeline.run import run  # noqa: PLC0415

    config = PipelineConfig.from_dict({"output_dir": str(tmp_path / "run"),
                                       "artifact_root": "nosuchscheme://bucket/run"})
    with pytest.raises(ConfigError, match="artifact_root: Beam cannot write to nosuchscheme"):
        run(config)
    assert not (tmp_path / "run" / "data").exists()  # nothing prepared
    assert main(["demo", "--output-dir", str(tmp_path / "cli"),
                 "--artifact-root", "nosuchscheme://bucket/run"]) == 2
    assert not (tmp_path / "cli").exists()
    with pytest.raises(ValueError, match="TensorFlow cannot write to s3://"):
        storage.check_root("s3://bucket/run")  # Beam knows s3, this TensorFlow does not
