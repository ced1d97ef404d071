"""Infrastructure, not analysis: where tokprob keeps its artifacts, model caches and
downloads."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tokprob.errors import TokprobError


def default_data_dir() -> Path:
    """The checkout's `data/` folder when tokprob runs from a checkout, else the user's
    data folder (`$XDG_DATA_HOME/tokprob`). `TOKPROB_DATA` or `--data-dir` override it."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "tokprob"


@dataclass(frozen=True)
class Workspace:
    """The artifact store's root folder and the fixed layout below it."""

    data_dir: str
    """Absolute path of the store's root."""

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike[str] | None = None) -> Workspace:
        """The workspace at `data_dir`, else `$TOKPROB_DATA`, else `default_data_dir()`."""
        chosen = data_dir or os.environ.get("TOKPROB_DATA") or default_data_dir()
        return cls(str(Path(chosen).expanduser().resolve()))

    def ensure_writable(self) -> None:
        """Fail now, with the remedy, if the store cannot be written (not after an hour
        of forward passes)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as error:
            raise TokprobError(
                f"Cannot write to the data folder {self.root} ({error.strerror or error}). "
                "Give a writable folder with --data-dir or TOKPROB_DATA, or fix its "
                "permissions."
            ) from None

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def artifacts(self) -> Path:
        """Stage outputs: `artifacts/<stage>/<key>/`."""
        return self.root / "artifacts"

    @property
    def models(self) -> Path:
        """Models converted once for fast reloading (GGUF dequantized to safetensors)."""
        return self.root / "models"

    @property
    def downloads(self) -> Path:
        """Checksummed PyPI archives of the built-in model and corpora, and their contents."""
        return self.root / "downloads"

    @property
    def prefect_results(self) -> Path:
        """Prefect's persisted task results (small artifact references)."""
        return self.root / "prefect-results"

    @property
    def prefect_home(self) -> Path:
        """Default PREFECT_HOME: the temporary server's database and settings."""
        return self.root / "prefect"

    @property
    def hf_datasets_cache(self) -> Path:
        return self.root / "hf-datasets"
