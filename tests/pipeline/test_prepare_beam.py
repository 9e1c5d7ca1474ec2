"""The Beam conversion gives the same examples as the in-process one and names bad rows."""

import glob
import os

import pytest
import tensorflow as tf

from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset
from pipeline.examples import write_tfrecords
from pipeline.prepare_beam import chunk_file, convert_with_beam
from pipeline.runners import beam_pipeline_args

SPEC = FeatureSpec(label="y", categorical=("user",), numerical=("price",))


def _dataset(tmp_path, bad_row: int | None = None) -> PreparedDataset:
    directory = tmp_path / "data"
    directory.mkdir()
    for split in ("train", "eval", "test"):
        lines = ["y,user,price"]
        for i in range(9):
            price = "oops" if bad_row is not None and split == "eval" and i + 2 == bad_row else i
            lines.append(f"{i % 2},u{i},{price}")
        lines.insert(5, "")  # a blank line (row 6) is skipped but still counted
        (directory / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return PreparedDataset("toy", str(directory), SPEC)


def _records(directory: str) -> list[bytes]:
    files = sorted(glob.glob(os.path.join(directory, "*.tfrecord")))
    return sorted(r.numpy() for r in tf.data.TFRecordDataset(files))


def test_chunks_cover_every_line_with_row_numbers(tmp_path):
    dataset = _dataset(tmp_path)
    chunks, rows = chunk_file("train", dataset.split_path("train"), chunk_rows=4)
    assert rows == 9
    assert [c.first_row for c in chunks] == [2, 6, 10]
    assert chunks[-1].end == os.path.getsize(dataset.split_path("train"))


def test_beam_and_in_process_conversions_agree(tmp_path):
    dataset = _dataset(tmp_path)
    counts = convert_with_beam(dataset, str(tmp_path / "beam"), beam_pipeline_args("direct"),
                               chunk_rows=3)
    assert counts == {"train": 9, "eval": 9, "test": 9}
    write_tfrecords(dataset, str(tmp_path / "plain"))
    for split in ("train", "eval", "test"):
        assert _records(str(tmp_path / "beam" / split)) == _records(str(tmp_path / "plain" / split))


@pytest.mark.parametrize("bad_row", [3, 9])
def test_beam_conversion_names_the_bad_row_and_publishes_nothing(tmp_path, bad_row):
    dataset = _dataset(tmp_path, bad_row=bad_row)
    out = tmp_path / "examples"
    row = bad_row + (bad_row >= 6)  # the blank line shifts later rows down by one
    with pytest.raises(DatasetError, match=f"eval.csv: row {row}: field 'price'"):
        write_tfrecords(dataset, str(out), beam_pipeline_args("direct"), beam_min_bytes=0)
    assert not out.exists() and not (tmp_path / "examples.partial").exists()
