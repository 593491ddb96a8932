"""Where weights come from: a local path, a hub id or a hub file, found offline or not at all.

Every model loader in :mod:`optical_cli.models` (DeepEncoder's weights, the adapter, Qwen3-VL,
the LoRA, tokenizers, sentence embedders) resolves its source through this module, so offline
behaviour and the messages for a missing model are the same everywhere. The loaders themselves
live beside their models: ``deepencoder/weights.py``, ``adapter.py``, ``language_model.py``,
``lora.py``, ``tokenizers.py``, ``sentence.py``. vLLM's model directory (weights linked, not
copied) is written by :mod:`optical_cli.engines.model_dir`.
"""

from __future__ import annotations

import functools
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError

from ..errors import ConfigError, ModelNotFoundError

HUB_PROBE_SECONDS = 3.0  # an unreachable hub costs this, not huggingface_hub's retries (~26 s)
HUB_FILE_SCHEME = "hf://"
_unreachable: str | None = None  # why the hub was found unreachable in this process, once probed


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


@functools.lru_cache(maxsize=None)
def _probe_hub() -> str | None:
    """None when the hub's endpoint answers an HTTP request (any status) within HUB_PROBE_SECONDS, else why not."""

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"the hub ({endpoint}) did not answer within {HUB_PROBE_SECONDS:.0f} s ({reason})"
    return None


def go_offline_if_unreachable() -> bool:
    """Probe the hub once; when it cannot be reached, work from the local cache as HF_HUB_OFFLINE=1
    would (for huggingface_hub and datasets alike), so a missing model fails in seconds. True when offline."""
    global _unreachable
    if hub_offline():
        return True
    _unreachable = _probe_hub()
    if _unreachable is None:
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"

    for module, name in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        if module in sys.modules:  # imported before the probe: they read the environment once
            setattr(sys.modules[module], name, True)
    return True


def offline_reason() -> str:
    return _unreachable or "the hub is offline (HF_HUB_OFFLINE=1)"


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with no path that exists locally."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not Path(source).exists() and not source.startswith((".", "~"))


def _hub_failure(what: str, download: str, exc: Exception, offline: bool) -> ModelNotFoundError:

    if offline or isinstance(exc, LocalEntryNotFoundError):
        return ModelNotFoundError(
            f"{what} is not in the local Hugging Face cache and {offline_reason()}; download it on a connected "
            f"machine (`hf download {download}`) or point the config at a local path"
        )
    return ModelNotFoundError(
        f"could not fetch {what} from the hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        "check the id and the network, or point the config at a local path"
    )


def resolve_local_or_hub(source: str, filenames: list[str] | None = None) -> Path:
    """A local path as it is, or a hub id downloaded (or found in the cache) as a snapshot directory.

    Fails at once, naming what was tried, when the path does not exist or the hub cannot be
    reached (HF_HUB_OFFLINE=1, or no answer within HUB_PROBE_SECONDS, and nothing in the cache).
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith(HUB_FILE_SCHEME):
        return resolve_hub_file(source)
    if not looks_like_hub_id(source):
        raise ModelNotFoundError(
            f"model path not found: {source}; pass an existing file or directory, or a hub id like owner/name"
        )

    offline = go_offline_if_unreachable()
    try:
        return Path(snapshot_download(source, allow_patterns=filenames, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise _hub_failure(f"model '{source}'", source, exc, offline) from None


def resolve_hub_file(source: str) -> Path:
    """``hf://owner/name/path/in/repo`` -> that one file, downloaded or found in the cache."""
    parts = source.removeprefix(HUB_FILE_SCHEME).split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ConfigError(f"{source} is not a hub file; write hf://owner/name/path/to/file")

    repo_id, filename = "/".join(parts[:2]), parts[2]
    offline = go_offline_if_unreachable()
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-file errors come in many types
        raise _hub_failure(f"'{filename}' of '{repo_id}'", f"{repo_id} {filename}", exc, offline) from None


# Everything a command will download, checked at once before anything loads


@dataclass(frozen=True)
class Download:
    """One thing a run needs from the hub: ``source`` (a hub id, ``hf://owner/name/file`` or a local path),
    the file whose presence in the cache stands for it, and the config key that names it."""

    what: str
    source: str
    key_file: str
    config_key: str
    repo_type: str = "model"

    def command(self) -> str:
        """The ``hf download`` line that fetches it."""
        if self.source.startswith(HUB_FILE_SCHEME):
            owner, name, file = self.source.removeprefix(HUB_FILE_SCHEME).split("/", 2)
            return f"hf download {owner}/{name} {file}"
        kind = f" {self.key_file} --repo-type dataset" if self.repo_type == "dataset" else ""
        return f"hf download {self.source}{kind}"


def _available(download: Download) -> bool:
    source = download.source
    if source == RANDOM_SOURCE or Path(source).expanduser().exists():
        return True
    if source.startswith(HUB_FILE_SCHEME):
        parts = source.removeprefix(HUB_FILE_SCHEME).split("/", 2)
        repo_id, filename = "/".join(parts[:2]), parts[2] if len(parts) == 3 else ""
    elif looks_like_hub_id(source):
        repo_id, filename = source, download.key_file
    else:
        return False  # a local path that does not exist
    return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=download.repo_type), str)


def require_downloads(downloads: list[Download], known_missing: list[Download] | None = None) -> None:
    """Fail once, naming every missing download with its ``hf download`` line, when the hub cannot be
    reached and some are neither local nor cached; online, what is missing is fetched when it loads.
    ``known_missing``: downloads a loader already failed to find (a hub dataset)."""
    missing = list(known_missing or []) + [d for d in downloads if not _available(d)]
    local = [d for d in missing if not d.source.startswith(HUB_FILE_SCHEME) and not looks_like_hub_id(d.source)]
    if local:
        shown = "; ".join(f"{d.config_key}={d.source}" for d in local)
        raise ModelNotFoundError(f"not found: {shown}; pass existing files or directories, or hub ids like owner/name")
    if not missing or not go_offline_if_unreachable():
        return
    lines = "\n".join(f"  {d.command()}    # {d.what} ({d.config_key})" for d in missing)
    raise ModelNotFoundError(
        f"{len(missing)} download(s) this run needs are not in the local Hugging Face cache and {offline_reason()}; "
        f"fetch them on a connected machine (or point the config keys at local paths):\n{lines}"
    )


# Model sources and the cache of derived models

RANDOM_SOURCE = "random"  # model source: random weights from a config (tests, tiny configs, speed runs)


def cache_dir() -> Path:
    """Where derived models are kept: ``$OPTICAL_CACHE``, else ``$XDG_CACHE_HOME/optical``,
    else ``~/.cache/optical``."""
    if os.environ.get("OPTICAL_CACHE"):
        return Path(os.environ["OPTICAL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optical"
