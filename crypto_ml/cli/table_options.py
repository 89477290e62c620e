"""The options of table runs (``--input TABLE`` and its columns), apart from the runs
themselves (:mod:`crypto_ml.cli.table`), so that building the parser imports neither
pyarrow nor pandas: every command pays for its parser, only table runs for their readers."""

from __future__ import annotations

from typing import Any

from crypto_ml.cli.options import path_option, positive_int

#: Options of table runs alone (argparse's names): given without --input they are refused.
TABLE_ONLY = ("id_col", "time_col", "value_col", "overwrite", "in_flight", "chunk_series")


def add_input_options(parser: Any, title: str) -> Any:
    """``--input TABLE`` and the names of its columns, in an option group of ``title``."""
    group = parser.add_argument_group(title)
    group.add_argument("--input", type=path_option, metavar="TABLE",
                       help="a long-format table instead of the data folder: a .parquet file, a "
                       "folder of them (hive partitions allowed) or a .csv file, with columns "
                       "unique_id, ds, y (--coins then picks series by their exact id; it "
                       "splits its list at commas and strips each id's spaces at its ends, so "
                       "an id holding a comma, or spaces at an end, cannot be picked)")
    # no argparse defaults: a column given without --input is refused, not ignored
    group.add_argument("--id-col", help="the series id column (unique_id)")
    group.add_argument("--time-col", help="the time column: dates or integers (ds)")
    group.add_argument("--value-col", help="the value column (y)")
    return group


def add_table_options(parser: Any) -> None:
    """The options of a table run (``send-tasks --input``; --output must be OUT.parquet)."""
    group = add_input_options(parser, "table runs (a long table of many series in, "
                              "--output OUT.parquet out)")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh even if --output holds a finished or interrupted run (OUT and "
                       "its failures table stay until the new run replaces them)")
    group.add_argument("--in-flight", type=positive_int, metavar="K",
                       help="at most K messages queued or running (default: 2 per task slot "
                       "of the live workers that take the run's queue, re-read as the run goes, "
                       "at least 4; until a worker is seen, 2 per CRYPTO_ML_WORKERS)")
    group.add_argument("--fallback-model", metavar="NAME",
                       help="forecast a series a model fails on (too short, not positive, no "
                       "fit) with this cheap model instead, in that model's columns "
                       "(statsforecast's fallback_model); the failures table keeps it, as "
                       "'filled by fallback NAME: why', not counted as failed (a series the "
                       "fallback fails on too is)")
    group.add_argument("--chunk-series", type=positive_int, metavar="N",
                       help="series per message (default: each model's own, ~0.1-1 s of work)")

