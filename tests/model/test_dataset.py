"""Data fetch: the UCI archive is checked and split into the platform's files."""

from __future__ import annotations

import http.server
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from churnops.data import dataset
from churnops.data.schema import DataValidationError
from tests.processes import LOOPBACK


@pytest.fixture
def archive_server(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """Serves a zip shaped like the UCI download, rebuilt from the three split files, over
    real HTTP on loopback."""
    whole = pd.concat(pd.read_csv(data_dir / name) for name in dataset.SPLIT_FILES)
    with zipfile.ZipFile(tmp_path / "uci.zip", "w") as archive:
        archive.writestr("Customer Churn.csv", whole.to_csv(index=False))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()


def test_download_check_and_split_reproduce_the_files(
    archive_server: str, data_dir: Path, tmp_path: Path
) -> None:
    written = dataset.fetch(tmp_path / "out", url=f"{archive_server}/uci.zip")
    assert [p.name for p in written] == list(dataset.SPLIT_FILES)
    for path in written:
        assert path.read_bytes() == (data_dir / path.name).read_bytes()


def test_failed_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(dataset.DataFetchError, match="CHURN_DATA_DIR"):
        dataset.fetch(tmp_path, url=f"http://{LOOPBACK}:9/missing.zip")


def test_wrong_row_count_is_refused(data_dir: Path) -> None:
    raw = (data_dir / "customer_churn_0.csv").read_bytes()
    with pytest.raises(DataValidationError, match="1050 rows, expected 3150"):
        dataset.check_uci(raw)


def test_copy_from_a_folder(data_dir: Path, tmp_path: Path) -> None:
    copied = dataset.fetch(tmp_path, source_dir=data_dir)
    assert {p.name for p in copied} >= set(dataset.SPLIT_FILES)


def test_copy_from_a_folder_without_the_files(tmp_path: Path) -> None:
    with pytest.raises(dataset.DataFetchError, match=r"lacks customer_churn_0\.csv"):
        dataset.fetch(tmp_path / "out", source_dir=tmp_path)


def test_an_archive_that_is_no_zip_says_what_to_give(tmp_path: Path) -> None:
    """A CSV passed as --archive, or a proxy's page saved as the download: it was
    zipfile's BadZipFile traceback."""
    archive = tmp_path / "customer_churn.csv"
    archive.write_bytes(b"Call  Failure,Complains\n8,0\n")
    with pytest.raises(dataset.DataFetchError, match=r"^not a zip archive .*--from DIR"):
        dataset.fetch(tmp_path / "out", archive=archive)
