"""Get the UCI Iranian churn data (3,150 customers) and split it into three consecutive
thirds: the training file, a later labeled file, and one whose columns mostly drift.
"""

from __future__ import annotations

import io
import shutil
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from churnops.data.reading import read_customer_file
from churnops.data.schema import RAW_COLUMNS, DataValidationError

UCI_ARCHIVE_URL = "https://archive.ics.uci.edu/static/public/563/iranian+churn+dataset.zip"
UCI_ROWS = 3150
SPLIT_FILES = (
    "customer_churn_0.csv",
    "customer_churn_1.csv",
    "customer_churn_2_majority_drifted.csv",
)


class DataFetchError(RuntimeError):
    """The data could not be obtained; the message says what to do instead."""


def download(url: str = UCI_ARCHIVE_URL, timeout: float = 60) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except OSError as exc:
        raise DataFetchError(
            f"could not download {url}: {exc}. Download it by hand and run "
            "`churnops data fetch --archive FILE.zip`, or point CHURN_DATA_DIR "
            "(or --from DIR) at a folder with the customer_churn_*.csv files."
        ) from exc


def extract_csv(archive: bytes) -> bytes:
    """The one CSV inside the UCI zip archive (it may be nested one zip deep)."""
    if not zipfile.is_zipfile(io.BytesIO(archive)):  # a CSV, a proxy's HTML page, a cut file
        raise DataFetchError(
            f"not a zip archive ({len(archive):,} bytes starting {archive[:16]!r}): give the "
            "UCI archive, or point --from DIR at a folder with the customer_churn_*.csv files"
        )
    with zipfile.ZipFile(io.BytesIO(archive)) as outer:
        names = outer.namelist()
        csvs = [n for n in names if n.lower().endswith(".csv")]
        if csvs:
            return outer.read(csvs[0])
        inner = [n for n in names if n.lower().endswith(".zip")]
        if inner:
            return extract_csv(outer.read(inner[0]))
    raise DataFetchError(f"no CSV file in the archive (it holds {', '.join(names)})")


def check_uci(raw: bytes) -> pd.DataFrame:
    """Check header, row count and schema of the whole UCI file; return it as read."""
    frame = pd.read_csv(io.BytesIO(raw))
    problems = []
    if list(frame.columns) != list(RAW_COLUMNS):
        problems.append(f"header is {list(frame.columns)}, expected {list(RAW_COLUMNS)}")
    if len(frame) != UCI_ROWS:
        problems.append(f"{len(frame)} rows, expected {UCI_ROWS}")
    if problems:
        raise DataValidationError(problems, "UCI churn file")
    read_customer_file(raw, name="UCI churn file", require_target=True)
    return frame


def split(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Three consecutive thirds, in file order (reproducible, no randomness)."""
    size = len(frame) // len(SPLIT_FILES)
    return {name: frame.iloc[i * size : (i + 1) * size] for i, name in enumerate(SPLIT_FILES)}


def write_split(raw: bytes, target_dir: Path) -> list[Path]:
    """Check the UCI file and write the split files with the original header."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for name, part in split(check_uci(raw)).items():
        part.to_csv(target_dir / name, index=False)
    return [target_dir / name for name in SPLIT_FILES]


def copy_from(source_dir: Path, target_dir: Path) -> list[Path]:
    """Copy already split files (every customer_churn_*.csv) from a folder."""
    files = sorted(source_dir.glob("customer_churn_*.csv"))
    missing = [n for n in SPLIT_FILES if not (source_dir / n).exists()]
    if missing:
        raise DataFetchError(f"{source_dir} lacks {', '.join(missing)}")
    target_dir.mkdir(parents=True, exist_ok=True)
    copied = [target_dir / path.name for path in files]
    for path, destination in zip(files, copied, strict=True):
        if path.resolve() != destination.resolve():
            shutil.copyfile(path, destination)
    return copied


def fetch(
    target_dir: Path,
    *,
    source_dir: Path | None = None,
    archive: Path | None = None,
    url: str = UCI_ARCHIVE_URL,
) -> list[Path]:
    """Make the split files exist in ``target_dir``: copy, unpack or download."""
    if source_dir is not None:
        return copy_from(source_dir, target_dir)
    data = archive.read_bytes() if archive is not None else download(url)
    return write_split(extract_csv(data), target_dir)
