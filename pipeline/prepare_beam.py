"""Large inputs: the validated CSV -> TFRecord conversion as a Beam job.

Each split file is cut into chunks of whole lines by one cheap sequential pass that records byte
offsets and row numbers; the chunks are parsed in parallel on the configured runner with the
same ``RowParser`` as the in-process path, so an error still names the file, the row and the
field. Bad rows go to an error output; any error fails the conversion and nothing is published.
Rows must not contain quoted line breaks (the in-process path handles those).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import apache_beam as beam

from pipeline.datasets.base import SPLITS, DatasetError, PreparedDataset
from pipeline.datasets.rows import RowParser

CHUNK_ROWS = 50_000
ERRORS_FILE = "errors.txt"


@dataclass(frozen=True)
class Chunk:
    """Whole lines ``[start, end)`` of a split file; its first line is row ``first_row``."""

    split: str
    path: str
    header: tuple[str, ...]
    start: int
    end: int
    first_row: int


def chunk_file(split: str, path: str, chunk_rows: int = CHUNK_ROWS) -> tuple[list[Chunk], int]:
    """Cuts a CSV file into chunks of ``chunk_rows`` lines; returns them and its data-row count."""
    if not os.path.exists(path):
        raise DatasetError(f"{path}: file not found.")
    with open(path, "rb") as f:
        first = f.readline()
        if not first.strip():
            raise DatasetError(f"{path}: row 1: the file is empty (no header row).")
        header = tuple(h.strip() for h in next(csv.reader([first.decode("utf-8-sig")])))
        chunks, rows, offset, row = [], 0, f.tell(), 2
        start, start_row = offset, row
        for line in f:
            offset += len(line)
            rows += bool(line.strip())
            row += 1
            if row - start_row == chunk_rows:
                chunks.append(Chunk(split, path, header, start, offset, start_row))
                start, start_row = offset, row
        if offset > start:
            chunks.append(Chunk(split, path, header, start, offset, start_row))
    if rows == 0:
        raise DatasetError(f"{path}: row 2: no data rows after the header.")
    return chunks, rows


class _ParseChunk(beam.DoFn):
    """Serialized tf.Examples of a chunk's rows; the first bad row goes to the ``errors`` output."""

    def __init__(self, dataset: PreparedDataset) -> None:
        self.spec = dataset.spec

    def process(self, chunk: Chunk):  # noqa: ANN201 - a Beam generator
        from pipeline.examples import to_example  # noqa: PLC0415 - TF stays out of pickling

        parser = RowParser(self.spec, chunk.path, list(chunk.header))
        with open(chunk.path, "rb") as f:
            f.seek(chunk.start)
            text = f.read(chunk.end - chunk.start).decode("utf-8")
        lines = io.StringIO(text).readlines()
        for number, line in enumerate(lines, start=chunk.first_row):
            if not line.strip():
                continue
            try:
                values = parser.parse(next(csv.reader([line])), number)
            except (DatasetError, csv.Error) as e:
                yield beam.pvalue.TaggedOutput("errors", (chunk.path, number, str(e)))
                return
            yield to_example(values, self.spec).SerializeToString(deterministic=True)


def convert_with_beam(dataset: PreparedDataset, staging: str, beam_args: list[str],
                      chunk_rows: int = CHUNK_ROWS) -> dict[str, int]:
    """Writes ``staging/<split>/data-*.tfrecord``; raises DatasetError naming the first bad row."""
    plan = {split: chunk_file(split, dataset.split_path(split), chunk_rows) for split in SPLITS}
    errors_path = os.path.join(staging, ERRORS_FILE)
    with beam.Pipeline(argv=beam_args) as pipeline:
        errors = []
        for split, (chunks, _) in plan.items():
            parsed = (pipeline
                      | f"Chunks[{split}]" >> beam.Create(chunks)
                      | f"Parse[{split}]" >> beam.ParDo(_ParseChunk(dataset)).with_outputs(
                          "errors", main="examples"))
            _ = parsed.examples | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                os.path.join(staging, split, "data"), file_name_suffix=".tfrecord")
            errors.append(parsed.errors)
        _ = (errors | "AllErrors" >> beam.Flatten()
             | "Format" >> beam.Map(lambda e: f"{e[0]}\t{e[1]}\t{e[2]}")
             | "WriteErrors" >> beam.io.WriteToText(errors_path, shard_name_template=""))
    with open(errors_path) as f:
        found = sorted((line.split("\t", 2) for line in f.read().splitlines()),
                       key=lambda e: (e[0], int(e[1])))
    os.remove(errors_path)
    if found:
        raise DatasetError(found[0][2])
    return {split: rows for split, (_, rows) in plan.items()}
