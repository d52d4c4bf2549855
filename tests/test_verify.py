"""Checksum sources: parsing real-world formats and choosing (and cross-checking) a digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from trayupdater.errors import SourceError, VerificationError
from trayupdater.release_model import Asset, Release, parse_version
from trayupdater.sources.github_json import release_from_github
from trayupdater.verify import (
    ExpectedDigest,
    check_digest,
    find_expected_digest,
    is_checksums_file,
    parse_checksums,
)

H1 = hashlib.sha256(b"one").hexdigest()
H2 = hashlib.sha256(b"two").hexdigest()
H3 = hashlib.sha256(b"three").hexdigest()
SHA512 = hashlib.sha512(b"one").hexdigest()


def make_release(*names: str, digests: dict[str, str] | None = None) -> Release:
    digests = digests or {}
    assets = tuple(
        Asset(name=n, api_url=f"api/{n}", download_url=f"dl/{n}", digest=digests.get(n))
        for n in names
    )
    return Release(tag="v1.0.0", version=parse_version("v1.0.0"), assets=assets)  # type: ignore[arg-type]


class Texts:
    """fetch_text for tests: serves given texts and records what was asked."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts
        self.asked: list[str] = []

    def __call__(self, asset: Asset) -> str:
        self.asked.append(asset.name)
        return self.texts[asset.name]


# --- parse_checksums ---------------------------------------------------------------------


def test_gnu_text_and_binary_modes():
    text = f"{H1}  app_Linux_x86_64.tar.gz\n{H2} *app_Windows_x86_64.zip\n"
    assert parse_checksums(text) == {
        "app_Linux_x86_64.tar.gz": H1,
        "app_Windows_x86_64.zip": H2,
    }


def test_bsd_and_openssl_styles():
    text = (
        f"SHA256 (a.tar.gz) = {H1}\n"
        f"SHA2-256(b.zip)= {H2.upper()}\n"
        f"SHA512 (c.tar.gz) = {SHA512}\n"  # another algorithm: ignored
        f"MD5 (d) = {'0' * 32}\n"
    )
    assert parse_checksums(text) == {"a.tar.gz": H1, "b.zip": H2}


def test_paths_reduce_to_basenames_and_noise_is_ignored():
    text = (
        "\ufeff# produced by CI\r\n"
        "\r\n"
        f"{H1}  ./dist/tool-linux.tar.gz\r\n"
        f"{H2}  dist\\tool-windows.zip\r\n"
        f"{SHA512}  tool-linux.tar.gz.sbom\r\n"  # sha512 line in a mixed file
        f"{'a' * 40}  sha1-only\r\n"
        f"{H3}\r\n"  # hash without a name
        "not a checksum line at all\r\n"
        f"{H3}  name with spaces.tar.gz\r\n"
    )
    assert parse_checksums(text) == {
        "tool-linux.tar.gz": H1,
        "tool-windows.zip": H2,
        "name with spaces.tar.gz": H3,
    }


def test_gnu_escaped_names():
    # A leading backslash marks an escaped name: "\\n" is a newline, "\\\\" a backslash
    # (which, like any path separator, then cuts the name to its last part).
    assert parse_checksums(f"\\{H1}  line\\nbreak\n") == {"line\nbreak": H1}
    assert parse_checksums(f"\\{H1}  dist\\\\tool.zip\n") == {"tool.zip": H1}


def test_name_listed_twice_with_different_hashes_is_left_out():
    text = f"{H1}  linux/tool\n{H2}  darwin/tool\n{H3}  other\n{H3}  ./other\n"
    assert parse_checksums(text) == {"other": H3}


def test_uppercase_hashes_are_lowered():
    assert parse_checksums(f"{H1.upper()}  x\n") == {"x": H1}


# --- which release files are checksum lists ----------------------------------------------


def test_checksum_file_names_over_real_asset_lists(shared_data: Path):
    names: set[str] = set()
    for case in json.loads((shared_data / "asset-cases.json").read_text()):
        names.update(case["assets"])
    assert sorted(n for n in names if is_checksums_file(n)) == [
        "SHA2-256SUMS",
        "SHA256SUMS",
        "checksums.txt",
        "croc_v10.2.4_checksums.txt",
        "kube-health_0.3.1_checksums.txt",
        "sha256.txt",
    ]


@pytest.mark.parametrize(
    "name",
    ["SHA2-512SUMS", "checksums.txt.sig", "sha256.txt.minisig", "x.tar.gz.sha256", "check.txt"],
)
def test_not_checksum_files(name: str):
    assert not is_checksums_file(name)


# --- find_expected_digest ----------------------------------------------------------------


def test_github_digest_from_real_release_json_agrees_with_checksums_file(shared_data: Path):
    data = json.loads(
        (shared_data / "releases" / "release-gitleaks-gitleaks-v8.30.0.json").read_text()
    )
    release = release_from_github(data)
    assert release is not None
    asset = release.asset("gitleaks_8.30.0_linux_x64.tar.gz")
    assert asset is not None and asset.sha256 is not None
    fetch = Texts(
        {"gitleaks_8.30.0_checksums.txt": f"{asset.sha256}  gitleaks_8.30.0_linux_x64.tar.gz\n"}
    )
    expected = find_expected_digest(release, asset, fetch)
    assert expected == ExpectedDigest(asset.sha256, "GitHub asset digest")
    assert fetch.asked == ["gitleaks_8.30.0_checksums.txt"]  # read to cross-check


def test_disagreeing_sources_are_tampering():
    release = make_release("app.tar.gz", "checksums.txt", digests={"app.tar.gz": f"sha256:{H1}"})
    fetch = Texts({"checksums.txt": f"{H2}  app.tar.gz\n"})
    with pytest.raises(VerificationError) as info:
        find_expected_digest(release, release.assets[0], fetch)
    message = str(info.value)
    assert "disagree" in message and H1 in message and H2 in message
    assert "GitHub asset digest" in message and "checksums.txt" in message


def test_checksums_file_listing_the_asset():
    release = make_release("croc_v10.2.4_Linux-64bit.tar.gz", "croc_v10.2.4_checksums.txt")
    fetch = Texts(
        {
            "croc_v10.2.4_checksums.txt": (
                f"{H2}  croc_v10.2.4_Linux-ARM64.tar.gz\n{H1}  croc_v10.2.4_Linux-64bit.tar.gz\n"
            )
        }
    )
    assert find_expected_digest(release, release.assets[0], fetch) == ExpectedDigest(
        H1, "croc_v10.2.4_checksums.txt"
    )


def test_sha512_list_is_not_fetched():
    release = make_release("yt-dlp_linux", "SHA2-256SUMS", "SHA2-512SUMS", "SHA2-256SUMS.sig")
    fetch = Texts({"SHA2-256SUMS": f"{H1}  yt-dlp_linux\n{H2}  yt-dlp_macos\n"})
    assert find_expected_digest(release, release.assets[0], fetch) == ExpectedDigest(
        H1, "SHA2-256SUMS"
    )
    assert fetch.asked == ["SHA2-256SUMS"]


def test_checksums_file_without_the_asset_falls_through_to_sidecar():
    release = make_release("tool.tar.gz", "checksums.txt", "tool.tar.gz.sha256")
    fetch = Texts(
        {"checksums.txt": f"{H2}  other.tar.gz\n", "tool.tar.gz.sha256": f"{H1}  tool.tar.gz\n"}
    )
    assert find_expected_digest(release, release.assets[0], fetch) == ExpectedDigest(
        H1, "tool.tar.gz.sha256"
    )


def test_micro_sha_sidecar_from_real_release_json(shared_data: Path):
    release = release_from_github(
        json.loads((shared_data / "releases" / "release-zyedidia-micro-latest.json").read_text())
    )
    assert release is not None
    asset = release.asset("micro-2.0.14-linux64.tar.gz")
    assert asset is not None and asset.sha256 is None  # no GitHub digest on this release
    # The real sidecar is 96 bytes: 64 hex, two spaces, the 29-character name, newline.
    sidecar = f"{H1}  micro-2.0.14-linux64.tar.gz\n"
    assert len(sidecar) == release.asset("micro-2.0.14-linux64.tar.gz.sha").size  # type: ignore[union-attr]
    fetch = Texts({"micro-2.0.14-linux64.tar.gz.sha": sidecar})
    assert find_expected_digest(release, asset, fetch) == ExpectedDigest(
        H1, "micro-2.0.14-linux64.tar.gz.sha"
    )
    assert fetch.asked == ["micro-2.0.14-linux64.tar.gz.sha"]  # not the .tgz.sha


def test_bare_hash_sidecar():
    release = make_release("mkcert-linux-amd64", "mkcert-linux-amd64.sha256sum")
    fetch = Texts({"mkcert-linux-amd64.sha256sum": f"{H1.upper()}\n"})
    assert find_expected_digest(release, release.assets[0], fetch) == ExpectedDigest(
        H1, "mkcert-linux-amd64.sha256sum"
    )


def test_sidecar_with_a_hash_of_the_wrong_length_is_ignored():
    release = make_release("tool.zip", "tool.zip.sha")
    fetch = Texts({"tool.zip.sha": f"{'b' * 40}  tool.zip\n"})  # SHA-1
    assert find_expected_digest(release, release.assets[0], fetch) is None


TV = "tv-0.14.5-x86_64"


def test_television_triple_sidecar_naming_the_archive():
    release = make_release(
        f"{TV}-unknown-linux-gnu.tar.gz",
        f"{TV}-unknown-linux-gnu.sha256",
        f"{TV}-unknown-linux-gnu.deb",
        f"{TV}-unknown-linux-gnu.deb.sha256",
    )
    fetch = Texts(
        {
            f"{TV}-unknown-linux-gnu.sha256": f"{H1}  {TV}-unknown-linux-gnu.tar.gz\n",
            f"{TV}-unknown-linux-gnu.deb.sha256": f"{H2}  {TV}-unknown-linux-gnu.deb\n",
        }
    )
    assert find_expected_digest(release, release.assets[0], fetch) == ExpectedDigest(
        H1, f"{TV}-unknown-linux-gnu.sha256"
    )
    assert fetch.asked == [f"{TV}-unknown-linux-gnu.sha256"]


def test_television_windows_zip_prefers_its_own_sidecar_over_the_triple_one():
    tar, zip_ = f"{TV}-pc-windows-msvc.tar.gz", f"{TV}-pc-windows-msvc.zip"
    release = make_release(tar, zip_, f"{zip_}.sha256", f"{TV}-pc-windows-msvc.sha256")
    fetch = Texts(
        {f"{zip_}.sha256": f"{H2}  {zip_}\n", f"{TV}-pc-windows-msvc.sha256": f"{H1}  {tar}\n"}
    )
    assert find_expected_digest(release, release.asset(zip_), fetch) == ExpectedDigest(  # type: ignore[arg-type]
        H2, f"{zip_}.sha256"
    )
    assert find_expected_digest(release, release.asset(tar), fetch) == ExpectedDigest(  # type: ignore[arg-type]
        H1, f"{TV}-pc-windows-msvc.sha256"
    )


def test_triple_sidecar_naming_another_file_does_not_count():
    release = make_release(f"{TV}-unknown-linux-gnu.tar.gz", f"{TV}-unknown-linux-gnu.sha256")
    fetch = Texts({f"{TV}-unknown-linux-gnu.sha256": f"{H1}  {TV}-unknown-linux-gnu.deb\n"})
    assert find_expected_digest(release, release.assets[0], fetch) is None


def test_triple_sidecar_with_bare_hash_is_ambiguous_when_two_archives_share_the_stem():
    tar, zip_ = f"{TV}-pc-windows-msvc.tar.gz", f"{TV}-pc-windows-msvc.zip"
    release = make_release(tar, zip_, f"{TV}-pc-windows-msvc.sha256")
    fetch = Texts({f"{TV}-pc-windows-msvc.sha256": f"{H1}\n"})
    assert find_expected_digest(release, release.asset(tar), fetch) is None  # type: ignore[arg-type]
    single = make_release(f"{TV}-apple-darwin.tar.gz", f"{TV}-apple-darwin.sha256")
    fetch = Texts({f"{TV}-apple-darwin.sha256": f"{H1}\n"})
    assert find_expected_digest(single, single.assets[0], fetch) == ExpectedDigest(
        H1, f"{TV}-apple-darwin.sha256"
    )


def test_nothing_published_is_none_without_fetching():
    release = make_release("tool_Linux_x86_64.tar.gz", "tool_Linux_x86_64.tar.gz.sbom.json")
    fetch = Texts({})
    assert find_expected_digest(release, release.assets[0], fetch) is None
    assert fetch.asked == []


def test_malformed_github_digest_is_an_error():
    release = make_release("a.tar.gz", digests={"a.tar.gz": "sha256:nothex"})
    with pytest.raises(VerificationError, match="malformed"):
        find_expected_digest(release, release.assets[0], Texts({}))


def test_non_sha256_github_digest_is_not_a_source():
    release = make_release("a.tar.gz", digests={"a.tar.gz": f"sha512:{SHA512}"})
    assert find_expected_digest(release, release.assets[0], Texts({})) is None


def test_fetch_errors_propagate_rather_than_meaning_no_checksum():
    release = make_release("a.tar.gz", "checksums.txt")

    def failing(asset: Asset) -> str:
        raise SourceError(f"{asset.name}: download answered HTTP 500")

    with pytest.raises(SourceError, match="HTTP 500"):
        find_expected_digest(release, release.assets[0], failing)


# --- check_digest ------------------------------------------------------------------------


def test_check_digest_passes_on_match_in_any_case():
    check_digest(H1.upper(), ExpectedDigest(H1, "checksums.txt"), "a.tar.gz")


def test_check_digest_mismatch_names_both_hashes_and_the_source():
    with pytest.raises(VerificationError) as info:
        check_digest(H2, ExpectedDigest(H1, "SHA256SUMS"), "witr-linux-amd64")
    message = str(info.value)
    assert "witr-linux-amd64" in message and H1 in message and H2 in message
    assert "SHA256SUMS" in message
    assert info.value.reason == "verification"
