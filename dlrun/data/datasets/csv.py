"""The user's table: numeric feature columns and a target column (data.path, data.target)."""

from __future__ import annotations

from typing import Any, ClassVar

from dlrun.config.schema import Config, Key
from dlrun.data import userfiles
from dlrun.data.registry import DATASETS, TASK, Arrays, Found, Source
from dlrun.data.sources import ProgressFn


class Csv(Source):
    name = "csv"
    description = "your table: numeric feature columns and a target column (data.path, data.target)"
    order = 40
    keys: ClassVar[dict[str, Key]] = {
        "path": Key((str,), None, None, "the file", nullable=True),
        "target": Key((str, int), None, None, "the target column, by name or index", nullable=True),
        "header": Key((bool,), None, None, "the first row names the columns (default: detected)", nullable=True),
        "task": TASK,
    }

    def check(self, cfg: Config, data: dict[str, Any], node: Any) -> None:
        if not data["path"]:
            raise cfg.error("the csv dataset needs data.path: the file to read", node, None, "data")
        if data["target"] is None:
            raise cfg.error(
                "the csv dataset needs data.target: the column to predict (a name, or an index)", node, None, "data"
            )

    def find(self, user_path: str | None) -> Found:
        return userfiles.user_file(user_path)

    def put(self) -> str:
        return "set data.path to your .csv file and data.target to the column to predict"

    def load(self, data_cfg: dict[str, Any], seed: int, progress: ProgressFn | None, allow_download: bool) -> Arrays:
        return userfiles.load_csv(data_cfg.get("path"), data_cfg["target"], data_cfg["task"], data_cfg.get("header"))

    def check_files(self, data_cfg: dict[str, Any]) -> None:
        userfiles.csv_check(data_cfg.get("path"))

    def input_shape(self, data_cfg: dict[str, Any]) -> tuple[int, ...] | None:
        return userfiles.csv_input_shape(data_cfg.get("path"), data_cfg.get("header"))

    def default_normalization(self, dtype: Any) -> str:
        return "standardize"  # table columns come in arbitrary units


DATASETS.add(Csv())
