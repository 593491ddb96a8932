"""The base of every config schema, and the experiment-tracker names a schema may take.

Depends on pydantic only: every job's schema module (``<job>/config.py``) builds on it.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    """Base of every schema: unknown keys are errors and values are not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


# Experiment trackers (accelerate's names, see optical_cli/tracking.py): the modules each needs, and what installs them
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "optical[tensorboard]"),
    "mlflow": (("mlflow",), "optical[mlflow]"),
    "wandb": (("wandb",), "optical[wandb]"),
    "trackio": (("trackio",), "optical[trackio]"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
}


def module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _installed_trackers(names: list[str]) -> list[str]:
    """Each tracker once, and only one that is installed: a config naming another is refused at load,
    before anything runs or is written."""
    for name in names:
        modules, install = TRACKER_PACKAGES[name]
        if not any(module_installed(module) for module in modules):
            raise PydanticCustomError(
                "tracker_missing",
                "{name} is not installed; pip install '{install}'",
                {"name": name, "install": install},
            )
    return list(dict.fromkeys(names))


TrackerNames = Annotated[
    list[Literal["tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab"]],
    AfterValidator(_installed_trackers),
]
