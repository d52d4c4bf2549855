"""minisign verification: formats, tampering, key mismatches, the release policy against a
real local release feed, and interoperability with the real ``minisign`` tool."""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from minisign_tool import generate_keypair, key_id_text, public_key_line, sign
from packaging.version import Version

from trayupdater.cli import main as cli_main
from trayupdater.demo import DEMO_REPO, child_archive
from trayupdater.errors import VerificationError
from trayupdater.feed import ReleaseFeed
from trayupdater.release_model import Asset, Release
from trayupdater.signatures import PublicKey, Signature, verify_minisign, verify_release_asset
from trayupdater.sources.github import GitHubSource
from trayupdater.store import VersionStore

DATA = b"#!/bin/sh\necho hello\n" * 100
REPO = "acme/server"
ASSET = "server_1.2.0_linux_amd64.tar.gz"


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair()


@pytest.fixture(scope="module")
def public_key(keypair) -> PublicKey:
    return PublicKey.parse(keypair[2])


def replace_line(text: str, index: int, new: str) -> str:
    lines = text.splitlines()
    lines[index] = new
    return "\n".join(lines) + "\n"


def reencode_blob(text: str, index: int, edit) -> str:
    """Decode base64 line ``index``, apply ``edit`` to the bytes and encode it back."""
    blob = bytearray(base64.b64decode(text.splitlines()[index]))
    edit(blob)
    return replace_line(text, index, base64.b64encode(bytes(blob)).decode())


# --- verify_minisign ------------------------------------------------------------------


@pytest.mark.parametrize("prehashed", [True, False], ids=["ED-prehashed", "Ed-legacy"])
def test_roundtrip_bytes_and_file(tmp_path: Path, keypair, public_key, prehashed: bool) -> None:
    secret, key_id, _ = keypair
    comment = "timestamp:1700000000\tfile:server.tar.gz"  # minisign's default shape, with a tab
    sig = sign(DATA, secret, key_id, comment, prehashed=prehashed)
    assert Signature.parse(sig).prehashed is prehashed
    assert verify_minisign(DATA, sig, public_key) == comment
    path = tmp_path / "server.tar.gz"
    path.write_bytes(DATA)
    assert verify_minisign(path, sig, public_key) == comment


@pytest.mark.parametrize("prehashed", [True, False], ids=["ED-prehashed", "Ed-legacy"])
def test_tampered_file_is_refused(keypair, public_key, prehashed: bool) -> None:
    secret, key_id, _ = keypair
    sig = sign(DATA, secret, key_id, "c", prehashed=prehashed)
    with pytest.raises(VerificationError, match="does not match the data"):
        verify_minisign(DATA + b"\n", sig, public_key)
    flipped = bytes([DATA[0] ^ 1]) + DATA[1:]
    with pytest.raises(VerificationError, match="does not match the data"):
        verify_minisign(flipped, sig, public_key)


def test_tampered_trusted_comment_is_refused(keypair, public_key) -> None:
    secret, key_id, _ = keypair
    sig = sign(DATA, secret, key_id, "timestamp:1700000000\tfile:server_1.2.0.tar.gz")
    forged = replace_line(sig, 2, "trusted comment: timestamp:1800000000\tfile:server_1.2.0.tar.gz")
    with pytest.raises(VerificationError, match="trusted comment was altered"):
        verify_minisign(DATA, forged, public_key)
    # Trailing whitespace is part of the signed comment, as in minisign.
    with pytest.raises(VerificationError, match="trusted comment was altered"):
        verify_minisign(DATA, replace_line(sig, 2, sig.splitlines()[2] + " "), public_key)


def test_untrusted_comment_is_not_authenticated(keypair, public_key) -> None:
    secret, key_id, _ = keypair
    sig = replace_line(sign(DATA, secret, key_id, "c"), 0, "untrusted comment: anything at all")
    assert verify_minisign(DATA, sig, public_key) == "c"


def test_switching_the_algorithm_breaks_the_signature(keypair, public_key) -> None:
    secret, key_id, _ = keypair
    sig = sign(DATA, secret, key_id, "c", prehashed=True)

    def to_legacy(blob: bytearray) -> None:
        blob[0:2] = b"Ed"

    with pytest.raises(VerificationError, match="does not match"):
        verify_minisign(DATA, reencode_blob(sig, 1, to_legacy), public_key)


def test_signature_by_another_key_names_both_key_ids(keypair, public_key) -> None:
    other_secret, other_id, _ = generate_keypair()
    sig = sign(DATA, other_secret, other_id, "c")
    with pytest.raises(VerificationError) as err:
        verify_minisign(DATA, sig, public_key)
    assert str(err.value).startswith(
        f"signed with key {key_id_text(other_id)}, expected {key_id_text(keypair[1])}"
    )


def test_same_key_id_but_different_key_is_a_bad_signature(keypair, public_key) -> None:
    impostor, _, _ = generate_keypair(key_id=keypair[1])
    sig = sign(DATA, impostor, keypair[1], "c")
    with pytest.raises(VerificationError, match="bad minisign signature: it does not match"):
        verify_minisign(DATA, sig, public_key)


def test_windows_line_endings_and_blank_lines_are_tolerated(keypair, public_key) -> None:
    secret, key_id, _ = keypair
    sig = sign(DATA, secret, key_id, "made on windows")
    crlf = "\r\n" + sig.replace("\n", "\r\n") + "\r\n\r\n"
    assert verify_minisign(DATA, crlf, public_key) == "made on windows"


def test_tauri_base64_wrapped_files(keypair) -> None:
    """Tauri stores both the public key and the .sig as base64 of the minisign file."""
    secret, key_id, pub_text = keypair
    wrapped_key = base64.b64encode(pub_text.encode()).decode()
    wrapped_sig = base64.b64encode(sign(DATA, secret, key_id, "tauri").encode()).decode()
    assert verify_minisign(DATA, wrapped_sig, PublicKey.parse(wrapped_key)) == "tauri"


def _good_sig() -> str:
    secret, key_id, _ = generate_keypair(key_id=b"\x01" * 8)
    return sign(DATA, secret, key_id, "c")


GOOD = _good_sig()
GOOD_LINES = GOOD.splitlines()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 4 lines"),
        ("\n\n", "expected 4 lines"),
        ("\n".join(GOOD_LINES[:3]), "comment signature), got 3"),
        (GOOD + "extra line\n", "comment signature), got 5"),
        (replace_line(GOOD, 0, "comment: x"), "line 1 does not start with 'untrusted comment:'"),
        (replace_line(GOOD, 1, "not*base64!"), "line 2: not valid base64"),
        (replace_line(GOOD, 1, GOOD_LINES[1][:-5]), "line 2: not valid base64"),
        (replace_line(GOOD, 1, "RUQ="), "line 2 decodes to 2 bytes, expected 74"),
        (
            replace_line(GOOD, 1, base64.b64encode(b"Xx" + bytes(72)).decode()),
            "algorithm b'Xx', expected b'Ed' or b'ED'",
        ),
        (replace_line(GOOD, 2, "trusted:c"), "line 3 does not start with 'trusted comment: '"),
        (replace_line(GOOD, 3, base64.b64encode(bytes(63)).decode()), "line 4 decodes to 63"),
        (replace_line(GOOD, 3, "%%%%"), "line 4: not valid base64"),
        ("-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n", "expected 4"),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else None,
)
def test_malformed_signatures_get_a_clear_error(text: str, message: str) -> None:
    key = PublicKey(key_id=b"\x01" * 8, key=bytes(32))
    with pytest.raises(VerificationError, match="invalid minisign signature") as err:
        verify_minisign(DATA, text, key)
    assert message in str(err.value)


def test_missing_file_is_a_verification_error(tmp_path: Path, keypair, public_key) -> None:
    sig = sign(DATA, keypair[0], keypair[1], "c")
    with pytest.raises(VerificationError, match="not a file"):
        verify_minisign(tmp_path / "gone.tar.gz", sig, public_key)


def test_legacy_signature_over_a_huge_file_is_refused_without_reading_it(
    tmp_path: Path, keypair, public_key
) -> None:
    big = tmp_path / "huge.bin"
    with big.open("wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: no GiB is written or read
    sig = sign(b"", keypair[0], keypair[1], "c", prehashed=False)
    with pytest.raises(VerificationError, match="only makes those for files up to 1 GiB"):
        verify_minisign(big, sig, public_key)


# --- PublicKey.parse ------------------------------------------------------------------


def test_public_key_from_bare_line_and_full_file(keypair) -> None:
    secret, key_id, pub_text = keypair
    line = public_key_line(secret, key_id)
    assert line.startswith("RW")  # base64 of "Ed": what publishers recognise
    from_line = PublicKey.parse(line)
    from_file = PublicKey.parse(pub_text)
    indented = PublicKey.parse("\n    " + pub_text.replace("\n", "\r\n    "))  # TOML """ block
    assert from_line == from_file == indented
    assert from_line.key_id == key_id
    assert from_line.key == bytes(secret.verify_key)
    assert f"minisign public key {from_line.key_id_hex}" in pub_text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected one base64 line"),
        ("untrusted comment: only a comment\n", "got 0 lines"),
        ("RWQ=\nRWQ=\n", "got 2 lines"),
        ("RW this is not base64", "not valid base64"),
        ("RWQ=", "decodes to 2 bytes, expected 42"),
        (base64.b64encode(b"Ed" + bytes(8 + 31)).decode(), "decodes to 41 bytes"),
        (base64.b64encode(b"ED" + bytes(40)).decode(), "algorithm b'ED'"),
    ],
)
def test_bad_public_keys_get_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(VerificationError, match="invalid minisign public key") as err:
        PublicKey.parse(text)
    assert message in str(err.value)


def test_public_key_fields_are_checked() -> None:
    with pytest.raises(VerificationError, match="key id must be 8 bytes"):
        PublicKey(key_id=b"short", key=bytes(32))


# --- verify_release_asset against a real local release feed ---------------------------


def publish(feed: ReleaseFeed, tmp_path: Path, files: dict[str, bytes]) -> tuple[Release, Path]:
    """Publish ``files`` as release v1.2.0 and fetch it back through the real GitHub client;
    the asset itself is "already downloaded" to tmp_path, as the pipeline leaves it."""
    feed.publish(REPO, "v1.2.0", files, checksums=False, digests=False)
    release = GitHubSource(REPO, api_url=feed.url).check().release
    assert release is not None
    path = tmp_path / ASSET
    path.write_bytes(DATA)
    return release, path


def checksums_for(entries: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in entries.items()).encode()


def check(feed: ReleaseFeed, release: Release, path: Path, pub_text: str) -> str:
    asset = release.asset(ASSET)
    assert asset is not None
    source = GitHubSource(REPO, api_url=feed.url)
    return verify_release_asset(
        release, asset, path, public_key=pub_text, fetch_text=source.fetch_text
    )


def test_release_with_asset_minisig(feed: ReleaseFeed, tmp_path: Path, keypair) -> None:
    secret, key_id, _ = keypair
    files = {ASSET: DATA, ASSET + ".minisig": sign(DATA, secret, key_id, "asset sig").encode()}
    release, path = publish(feed, tmp_path, files)
    assert check(feed, release, path, public_key_line(secret, key_id)) == "asset sig"


@pytest.mark.parametrize("name", ["checksums.txt", "SHA256SUMS", "server_1.2.0_checksums.txt"])
def test_release_with_signed_checksums(
    feed: ReleaseFeed, tmp_path: Path, keypair, name: str
) -> None:
    secret, key_id, pub_text = keypair
    sums = checksums_for({"other.zip": b"x", ASSET: DATA})
    files = {ASSET: DATA, name: sums, name + ".minisig": sign(sums, secret, key_id, name).encode()}
    release, path = publish(feed, tmp_path, files)
    assert check(feed, release, path, pub_text) == name


def test_unsigned_release_is_refused(feed: ReleaseFeed, tmp_path: Path, keypair) -> None:
    # checksums.txt without .minisig, and a cosign .sig, which is not minisign.
    files = {
        ASSET: DATA,
        "checksums.txt": checksums_for({ASSET: DATA}),
        "checksums.txt.sig": b"MEUCIQDcosignsignaturebase64==",
        ASSET + ".sig": b"MEUCIQDcosignsignaturebase64==",
    }
    release, path = publish(feed, tmp_path, files)
    with pytest.raises(VerificationError) as err:
        check(feed, release, path, keypair[2])
    assert str(err.value) == (
        f"release v1.2.0 has no minisign signature for {ASSET} or its checksums file; "
        "refusing (a public key is configured)"
    )


def test_signature_by_another_key_is_refused(feed: ReleaseFeed, tmp_path: Path, keypair) -> None:
    other_secret, other_id, _ = generate_keypair()
    sums = checksums_for({ASSET: DATA})
    files = {
        ASSET: DATA,
        ASSET + ".minisig": sign(DATA, other_secret, other_id).encode(),
        "checksums.txt": sums,
        "checksums.txt.minisig": sign(sums, other_secret, other_id).encode(),
    }
    release, path = publish(feed, tmp_path, files)
    with pytest.raises(VerificationError) as err:
        check(feed, release, path, keypair[2])
    text = str(err.value)
    assert text.startswith(f"release v1.2.0: no valid minisign signature for {ASSET}; refusing.")
    assert f"{ASSET}.minisig: signed with key {key_id_text(other_id)}" in text
    assert f"checksums.txt: signed with key {key_id_text(other_id)}" in text


def test_signed_checksums_listing_another_hash_are_refused(
    feed: ReleaseFeed, tmp_path: Path, keypair
) -> None:
    secret, key_id, pub_text = keypair
    sums = checksums_for({ASSET: b"the build that was signed"})
    files = {
        ASSET: DATA,
        "checksums.txt": sums,
        "checksums.txt.minisig": sign(sums, secret, key_id).encode(),
    }
    release, path = publish(feed, tmp_path, files)
    with pytest.raises(VerificationError) as err:
        check(feed, release, path, pub_text)
    assert f"the file has {hashlib.sha256(DATA).hexdigest()}" in str(err.value)


def test_signed_checksums_not_listing_the_asset_are_refused(
    feed: ReleaseFeed, tmp_path: Path, keypair
) -> None:
    secret, key_id, pub_text = keypair
    sums = checksums_for({"other.zip": DATA})
    files = {
        ASSET: DATA,
        "checksums.txt": sums,
        "checksums.txt.minisig": sign(sums, secret, key_id).encode(),
    }
    release, path = publish(feed, tmp_path, files)
    with pytest.raises(
        VerificationError, match=f"checksums.txt: signed, but does not list {ASSET}"
    ):
        check(feed, release, path, pub_text)


def test_downloaded_file_differing_from_the_signed_one_is_refused(
    feed: ReleaseFeed, tmp_path: Path, keypair
) -> None:
    secret, key_id, pub_text = keypair
    files = {ASSET: DATA, ASSET + ".minisig": sign(DATA, secret, key_id).encode()}
    release, path = publish(feed, tmp_path, files)
    path.write_bytes(DATA + b"# appended by a mirror\n")
    with pytest.raises(VerificationError, match=f"does not match the file {ASSET}"):
        check(feed, release, path, pub_text)


def test_rotation_release_signed_by_both_keys_passes_either_config(
    feed: ReleaseFeed, tmp_path: Path, keypair, caplog: pytest.LogCaptureFixture
) -> None:
    """packaging/SIGNING.md's rotation: archives signed with the old key, checksums.txt with
    the new one. Any valid path is enough (an attacker who can replace a .minisig could as
    well delete it), so copies configured with either key accept the release."""
    secret, key_id, new_pub = keypair
    old_secret, old_id, old_pub = generate_keypair()
    sums = checksums_for({ASSET: DATA})
    files = {
        ASSET: DATA,
        ASSET + ".minisig": sign(DATA, old_secret, old_id, "old key").encode(),
        "checksums.txt": sums,
        "checksums.txt.minisig": sign(sums, secret, key_id, "new key").encode(),
    }
    release, path = publish(feed, tmp_path, files)
    assert check(feed, release, path, old_pub) == "old key"
    with caplog.at_level(logging.WARNING, logger="trayupdater.signatures"):
        assert check(feed, release, path, new_pub) == "new key"
    assert f"signed with key {key_id_text(old_id)}" in caplog.text


def test_invalid_configured_key_is_reported(tmp_path: Path) -> None:
    asset = Asset(name=ASSET, api_url="", download_url="")
    release = Release(tag="v1.2.0", version=Version("1.2.0"), assets=(asset,))
    with pytest.raises(VerificationError, match="invalid minisign public key"):
        verify_release_asset(
            release, asset, tmp_path / ASSET, public_key="RWnope", fetch_text=lambda a: ""
        )


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_check_command_with_a_configured_key(
    feed: ReleaseFeed, tmp_path: Path, keypair, signed: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole pipeline (`trayupdater check`): the configured key gates installation."""
    secret, key_id, _ = keypair
    name, archive = child_archive("1.2.0")
    sums = checksums_for({name: archive})
    files = {name: archive, "checksums.txt": sums}
    if signed:
        files["checksums.txt.minisig"] = sign(sums, secret, key_id, "release 1.2.0").encode()
    feed.publish(DEMO_REPO, "v1.2.0", files, checksums=False)
    config = tmp_path / "config.toml"
    config.write_text(f'[security]\npublic_key = "{public_key_line(secret, key_id)}"\n')
    data = tmp_path / "data"
    argv = ["--api-url", feed.url, "--repo", DEMO_REPO, "--data-dir", str(data)]
    code = cli_main([*argv, "--config", str(config), "check"])
    err = capsys.readouterr().err
    if signed:
        assert code == 0, err
        assert VersionStore(data).installed() == ["1.2.0"]
    else:
        assert code == 1
        assert "has no minisign signature" in err and "Traceback" not in err
        assert VersionStore(data).installed() == []


# --- interoperability with the real minisign tool --------------------------------------

MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(MINISIGN is None, reason="minisign CLI not installed")


def run_minisign(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert MINISIGN is not None
    return subprocess.run(
        [MINISIGN, *args],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,  # -W keys have no password: it must never prompt
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )


@needs_minisign
def test_interop_real_minisign_signs_we_verify(tmp_path: Path) -> None:
    made = run_minisign(tmp_path, "-G", "-W", "-p", "k.pub", "-s", "k.key")
    assert made.returncode == 0, made.stderr
    pub_text = (tmp_path / "k.pub").read_text()
    key = PublicKey.parse(pub_text)
    assert f"minisign public key {key.key_id_hex}" in pub_text
    target = tmp_path / "checksums.txt"
    target.write_bytes(checksums_for({ASSET: DATA}))
    for flags, sig_name in (([], "checksums.txt.minisig"), (["-l"], "legacy.minisig")):
        signed = run_minisign(
            tmp_path, "-S", *flags, "-s", "k.key", "-m", "checksums.txt", "-x", sig_name,
            "-t", f"tool sig {flags}",
        )  # fmt: skip
        assert signed.returncode == 0, signed.stderr
        sig_text = (tmp_path / sig_name).read_text()
        assert Signature.parse(sig_text).prehashed is (not flags)
        assert verify_minisign(target, sig_text, key) == f"tool sig {flags}"
        with pytest.raises(VerificationError, match="does not match"):
            verify_minisign(target.read_bytes() + b"x", sig_text, key)


@needs_minisign
@pytest.mark.parametrize("prehashed", [True, False], ids=["ED-prehashed", "Ed-legacy"])
def test_interop_we_sign_real_minisign_verifies(tmp_path: Path, keypair, prehashed: bool) -> None:
    secret, key_id, _ = keypair
    target = tmp_path / ASSET
    target.write_bytes(DATA)
    comment = "timestamp:1700000000\tfile:" + ASSET
    (tmp_path / "s.minisig").write_text(sign(DATA, secret, key_id, comment, prehashed=prehashed))
    line = public_key_line(secret, key_id)
    ok = run_minisign(tmp_path, "-V", "-P", line, "-m", ASSET, "-x", "s.minisig")
    assert ok.returncode == 0, ok.stderr
    assert f"Trusted comment: {comment}" in ok.stdout
    target.write_bytes(DATA + b"x")
    bad = run_minisign(tmp_path, "-V", "-P", line, "-m", ASSET, "-x", "s.minisig")
    assert bad.returncode != 0
    assert "Signature verification failed" in bad.stderr
