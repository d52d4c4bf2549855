"""Where the TUF trust anchor (the publisher's ``root.json``) comes from.

The first root a client trusts cannot come from the network (whoever serves the metadata
could serve any root), so it travels with the app: ``[security] trusted_root`` when set, else
the file shipped with the executable, else one put in the config folder by hand:

1. ``root.json`` next to the executable of a frozen build (an installer may place it there);
2. ``root.json`` inside a PyInstaller bundle (``sys._MEIPASS``), which ``build.spec`` adds
   when the build is given one (``TRAYUPDATER_TRUSTED_ROOT=path``);
3. ``root.json`` in the config folder.

Later roots are not read from here: ngclient follows the repository's ``N.root.json`` chain
from this one and caches what it verified.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from trayupdater.config import default_config_path
from trayupdater.errors import SourceError

ROOT_FILE = "root.json"
MAX_ROOT_BYTES = 512 * 1024  # ngclient's own cap for root metadata


def default_locations(
    *,
    frozen: bool | None = None,
    executable: str | None = None,
    bundle: str | None = None,
    config_dir: Path | None = None,
) -> list[Path]:
    """Where a trusted root is looked for when none is configured, in order."""
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    places: list[Path] = []
    if frozen:
        places.append(Path(executable or sys.executable).resolve().parent / ROOT_FILE)
        meipass = bundle if bundle is not None else getattr(sys, "_MEIPASS", None)
        if meipass:
            places.append(Path(meipass) / ROOT_FILE)
    places.append((config_dir or default_config_path().parent) / ROOT_FILE)
    return places


def find_trusted_root(configured: Path | None, locations: Sequence[Path] | None = None) -> Path:
    """The trusted root file to use; SourceError naming every place looked at if none."""
    if configured is not None:
        if not configured.is_file():
            raise SourceError(
                f"trusted root {configured} not found: put the publisher's root.json there "
                "or fix [security] trusted_root"
            )
        return configured
    places = list(locations) if locations is not None else default_locations()
    for place in places:
        if place.is_file():
            return place
    looked = ", ".join(str(p) for p in places)
    raise SourceError(
        f"no trusted root for the TUF source (looked at {looked}): ship the publisher's "
        "root.json with the app or set [security] trusted_root"
    )


def read_trusted_root(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_ROOT_BYTES + 1)
    except OSError as exc:
        raise SourceError(f"cannot read trusted root {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_ROOT_BYTES:
        raise SourceError(f"trusted root {path} is larger than {MAX_ROOT_BYTES} bytes; refused")
    return data
