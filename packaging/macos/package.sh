#!/bin/sh
# Package dist/TrayUpdater.app as the release asset trayupdater_Darwin_<arch>.zip.
#   packaging/macos/package.sh arm64            (or x86_64)
# Optional, from CI secrets: MACOS_SIGN_IDENTITY ("Developer ID Application: ...") signs
# the bundle with the hardened runtime; NOTARY_PROFILE (a `xcrun notarytool
# store-credentials` profile) notarizes and staples it. A self-update downloads with
# requests, which sets no quarantine flag, but a first install from a browser does:
# unsigned builds then need right-click > Open once.
# Users install by unzipping into /Applications (or ~/Applications). The app replaces
# the whole bundle when it updates itself, so the bundle must be writable by its user.
set -eu
ARCH=${1:?usage: package.sh arm64|x86_64}
APP=dist/TrayUpdater.app
OUT=dist/trayupdater_Darwin_${ARCH}.zip
[ -d "$APP" ] || { echo "package.sh: $APP missing; run pyinstaller build.spec first" >&2; exit 1; }

if [ -n "${MACOS_SIGN_IDENTITY:-}" ]; then
    codesign --force --deep --options runtime --timestamp --sign "$MACOS_SIGN_IDENTITY" "$APP"
    codesign --verify --strict --verbose=2 "$APP"
fi
rm -f "$OUT"
# ditto keeps symlinks, modes and the signature; --keepParent puts TrayUpdater.app/ at the top.
ditto -c -k --sequesterRsrc --keepParent "$APP" "$OUT"
if [ -n "${MACOS_SIGN_IDENTITY:-}" ] && [ -n "${NOTARY_PROFILE:-}" ]; then
    xcrun notarytool submit "$OUT" --keychain-profile "$NOTARY_PROFILE" --wait
    xcrun stapler staple "$APP"
    rm -f "$OUT"
    ditto -c -k --sequesterRsrc --keepParent "$APP" "$OUT"
fi
echo "$OUT"
