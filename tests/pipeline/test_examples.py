"""Bad input gets an error naming the file, row and field; nothing half-written is left."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset
from pipeline.examples import read_rows, to_example, write_tfrecords
from tests.conftest import REPO_ROOT

SPEC = FeatureSpec(label="y", categorical=("user", "item"), numerical=("price",))
GOOD = "y,user,item,price\n1,u1,i1,2.5\n0,u2,i2,3\n"


def _write(tmp_path, name: str, text: str) -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_good_rows_parse_with_declared_types(tmp_path):
    rows = list(read_rows(_write(tmp_path, "a.csv", GOOD), SPEC))
    assert rows == [{"y": 1, "user": "u1", "item": "i1", "price": 2.5},
                    {"y": 0, "user": "u2", "item": "i2", "price": 3.0}]
    example = to_example(rows[0], SPEC)
    assert example.features.feature["user"].bytes_list.value == [b"u1"]
    assert example.features.feature["price"].float_list.value == [2.5]
    assert example.features.feature["y"].int64_list.value == [1]


@pytest.mark.parametrize("text, row, needle", [
    (GOOD + "1,u3,i3\n", 4, "has 3 fields"),
    (GOOD + "1,u3,i3,4,5\n", 4, "has 5 fields"),
    (GOOD + "1,u3,i3,cheap\n", 4, "field 'price' is numerical"),
    (GOOD + "1,u3,i3,nan\n", 4, "field 'price' holds 'nan'"),
    (GOOD + "1,u3,i3,\n", 4, "only in optional numerical fields"),
    (GOOD + "1,u3,i3,inf\n", 4, "field 'price' holds 'inf'"),
    (GOOD + "2,u3,i3,1\n", 4, "field 'y' (label) must be 0 or 1"),
    (GOOD + "1,u3,i3,-3.5e38\n", 4, "field 'price' holds '-3.5e38', beyond the float32"),
    ("y,user,item,price\n", 2, "no data rows"),
    ("y,user,item,price\n\n\r\n", 2, "no data rows"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, text, row, needle):
    path = _write(tmp_path, "bad.csv", text)
    with pytest.raises(DatasetError) as info:
        list(read_rows(path, SPEC))
    message = str(info.value)
    assert path in message
    assert needle in message
    assert f"row {row}:" in message


def test_empty_file(tmp_path):
    path = _write(tmp_path, "empty.csv", "")
    with pytest.raises(DatasetError, match=f"{path}: row 1: the file is empty"):
        list(read_rows(path, SPEC))


def test_bytes_that_are_not_utf8_name_their_row_and_field(tmp_path):
    path = os.path.join(tmp_path, "latin1.csv")
    with open(path, "wb") as f:  # a cell from a Latin-1 file, then a long valid tail
        f.write(GOOD.encode() + "1,Zoë,i3,1\n".encode("latin-1") + b"0,u,i,1\n" * 5000)
    with pytest.raises(DatasetError, match=r"latin1\.csv: row 4: field 'user' holds bytes that "
                                           r"are not UTF-8 \('Zo\\udceb'\)"):
        list(read_rows(path, SPEC))


def test_missing_label_column_is_named(tmp_path):
    path = _write(tmp_path, "nolabel.csv", "user,item,price\nu1,i1,2\n")
    with pytest.raises(DatasetError, match=r"row 1: header lacks column\(s\) \['y'\]"):
        list(read_rows(path, SPEC))
    assert list(read_rows(path, SPEC, require_label=False)) == [
        {"user": "u1", "item": "i1", "price": 2.0}]


def _dataset(tmp_path, test_text: str) -> PreparedDataset:
    directory = os.path.join(tmp_path, "data")
    os.makedirs(directory)
    for split, text in (("train", GOOD), ("eval", GOOD), ("test", test_text)):
        _write(directory, f"{split}.csv", text)
    return PreparedDataset("toy", directory, SPEC)


def test_write_tfrecords_counts_and_reads_back(tmp_path):
    out = os.path.join(tmp_path, "examples")
    assert write_tfrecords(_dataset(tmp_path, GOOD), out) == {"train": 2, "eval": 2, "test": 2}
    records = list(tf.data.TFRecordDataset(os.path.join(out, "test", "data.tfrecord")))
    assert len(records) == 2


def test_write_tfrecords_leaves_nothing_on_bad_input(tmp_path):
    out = os.path.join(tmp_path, "examples")
    with pytest.raises(DatasetError, match="test.csv: row 3"):
        write_tfrecords(_dataset(tmp_path, "y,user,item,price\n1,u,i,1\n1,u,i,x\n"), out)
    assert not os.path.exists(out)
    assert not os.path.exists(out + ".partial")


def test_rewriting_identical_data_keeps_the_files(tmp_path):
    out = os.path.join(tmp_path, "examples")
    dataset = _dataset(tmp_path, GOOD)
    write_tfrecords(dataset, out)
    path = os.path.join(out, "train", "data.tfrecord")
    os.utime(path, (1, 1))
    write_tfrecords(dataset, out)
    assert os.stat(path).st_mtime == 1
    with open(dataset.split_path("train"), "a") as f:
        f.write("0,u9,i9,1\n")
    assert write_tfrecords(dataset, out)["train"] == 3
    assert os.stat(path).st_mtime != 1


def test_identical_data_keeps_its_files_across_processes(tmp_path):
    """Each CLI run is a new process with its own string-hash seed, which orders a tf.Example's
    feature map: unless serialised deterministically, identical data was rewritten, and its
    new mtimes missed ImportExampleGen's cache and every cached execution after it."""
    _dataset(tmp_path, GOOD)
    out = os.path.join(tmp_path, "examples")
    script = ("import sys; from pipeline.datasets.base import PreparedDataset; "
              "from pipeline.examples import write_tfrecords; "
              "from tests.pipeline.test_examples import SPEC; "
              "write_tfrecords(PreparedDataset('toy', sys.argv[1], SPEC), sys.argv[2])")
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, TF_USE_LEGACY_KERAS="1")
        subprocess.run([sys.executable, "-c", script, os.path.join(tmp_path, "data"), out],
                       check=True, env=env, capture_output=True, cwd=REPO_ROOT)
        if seed == "1":
            os.utime(os.path.join(out, "train", "data.tfrecord"), (1, 1))
    assert os.stat(os.path.join(out, "train", "data.tfrecord")).st_mtime == 1


def test_an_optional_numerical_cell_may_be_empty_and_is_left_out(tmp_path):
    spec = FeatureSpec(label="y", categorical=("user", "item"), numerical=("price",),
                       optional_numerical=("price",))
    rows = list(read_rows(_write(tmp_path, "a.csv", GOOD + "1,u3,i3, \n"), spec))
    assert rows[-1]["price"] is None and rows[0]["price"] == 2.5
    assert "price" not in to_example(rows[-1], spec).features.feature
    with pytest.raises(DatasetError, match="not numerical"):
        FeatureSpec(label="y", categorical=("user",), optional_numerical=("user",))
