"""The user's arrays: an `.npz` with x_train, y_train and optionally x_test, y_test (data.path)."""

from __future__ import annotations

from typing import Any, ClassVar

from dlrun.config.schema import Config, Key
from dlrun.data import userfiles
from dlrun.data.registry import DATASETS, TASK, Arrays, Found, Source
from dlrun.data.sources import ProgressFn


class Npz(Source):
    name = "npz"
    description = "your arrays: an .npz with x_train, y_train[, x_test, y_test] (data.path)"
    order = 30
    keys: ClassVar[dict[str, Key]] = {
        "path": Key((str,), None, None, "the file", nullable=True),
        "task": TASK,
    }

    def check(self, cfg: Config, data: dict[str, Any], node: Any) -> None:
        if not data["path"]:
            raise cfg.error("the npz dataset needs data.path: the file to read", node, None, "data")

    def find(self, user_path: str | None) -> Found:
        return userfiles.user_file(user_path)

    def put(self) -> str:
        return "set data.path to your .npz file (arrays x_train, y_train, optionally x_test, y_test)"

    def load(self, data_cfg: dict[str, Any], seed: int, progress: ProgressFn | None, allow_download: bool) -> Arrays:
        return userfiles.load_npz(data_cfg.get("path"), data_cfg["task"])

    def check_files(self, data_cfg: dict[str, Any]) -> None:
        userfiles.npz_headers_check(data_cfg.get("path"))

    def input_shape(self, data_cfg: dict[str, Any]) -> tuple[int, ...] | None:
        return userfiles.npz_input_shape(data_cfg.get("path"))


DATASETS.add(Npz())
