"""A ``.minisig`` among a version's TUF targets, fetched and checked like its asset: from the
same quoted URL (any file name the publisher accepts), capped at its signed length and
compared with its signed hashes. A real publisher, a real static server (nginx when there)."""

from __future__ import annotations

from pathlib import Path

import pytest
from minisign_tool import generate_keypair, public_key_line, sign
from static_server import StaticServer
from tuf_support import Publisher, tuf_source

from trayupdater.download import Pace
from trayupdater.errors import VerificationError

DATA = b"payload " * 50


def published(tmp_path: Path, name: str) -> tuple[Publisher, str]:
    """Version 1.0.0 holding ``name`` and its signature; the public key line."""
    publisher = Publisher(tmp_path).init()
    secret, key_id, _ = generate_keypair()
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    asset = uploads / name
    asset.write_bytes(DATA)
    signature = uploads / (name + ".minisig")
    signature.write_text(sign(DATA, secret, key_id))
    publisher.add("1.0.0", files=[asset, signature])
    return publisher, public_key_line(secret, key_id)


@pytest.mark.parametrize("name", ["my app.tar.gz", "app#1.tar.gz", "app%41.tar.gz", "app?x.tar.gz"])
def test_a_signature_is_found_whatever_the_file_is_called(tmp_path: Path, name: str) -> None:
    """ngclient's download_target glued the raw name onto the URL: a space was refused by
    the URL policy, ``#`` and ``?`` cut the URL short, ``%41`` named another file."""
    publisher, public_key = published(tmp_path, name)
    with StaticServer(publisher.dir, tmp_path / "server") as server:
        source = tuf_source(server.url, publisher, tmp_path / "cache")
        release = source.check().release
        assert release is not None
        asset = release.asset(name)
        assert asset is not None
        dest = tmp_path / "download" / "file"
        dest.parent.mkdir()
        result = source.fetch(release, asset, dest, max_bytes=10**6, pace=Pace())
        # Raises unless the signature's own bytes came back (nginx logs the decoded path,
        # so the hits cannot show names with a space).
        source.verify_signature(release, asset, result.path, public_key)


@pytest.mark.parametrize("change", ["other bytes", "longer"])
def test_a_signature_changed_on_the_host_is_refused(tmp_path: Path, change: str) -> None:
    """Fetched outside ngclient now, so checked here as ngclient would: signed length (the
    read stops there) and signed hashes."""
    publisher, public_key = published(tmp_path, "app.tar.gz")
    served = publisher.dir / "targets" / "1.0.0" / "app.tar.gz.minisig"
    text = served.read_bytes()
    served.write_bytes(text.swapcase() if change == "other bytes" else text + b"\n" * 10)
    with StaticServer(publisher.dir, tmp_path / "server") as server:
        source = tuf_source(server.url, publisher, tmp_path / "cache")
        release = source.check().release
        assert release is not None
        asset = release.asset("app.tar.gz")
        assert asset is not None
        dest = tmp_path / "download" / "file"
        dest.parent.mkdir()
        result = source.fetch(release, asset, dest, max_bytes=10**6, pace=Pace())
        with pytest.raises(VerificationError, match="does not match its signed TUF metadata"):
            source.verify_signature(release, asset, result.path, public_key)
