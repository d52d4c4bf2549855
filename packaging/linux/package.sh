#!/bin/sh
# Package the Linux onedir build as the release asset trayupdater_Linux_<arch>.tar.gz:
#   TRAYUPDATER_BUILD_VERSION=1.2.3 pyinstaller build.spec && packaging/linux/package.sh x86_64
# The archive holds one folder, trayupdater/: the executable, its _internal/ libraries
# (GTK included, for a tray menu), the .desktop file, the icon and install.sh. That folder
# is what a self-update swaps as a whole.
set -eu
ARCH=${1:?usage: package.sh x86_64|arm64}
HERE=$(cd "$(dirname "$0")" && pwd)
DIST=dist/trayupdater
[ -x "$DIST/trayupdater" ] || { echo "package.sh: $DIST/trayupdater missing (onedir build)" >&2; exit 1; }
cp "$HERE/trayupdater.desktop" "$HERE/install.sh" "$DIST/"
if [ -f assets/trayupdater.png ]; then
    cp assets/trayupdater.png "$DIST/"
else
    python -m trayupdater.icons build/icons >/dev/null && cp build/icons/trayupdater.png "$DIST/"
fi
OUT=dist/trayupdater_Linux_${ARCH}.tar.gz
# --owner/--group: no build machine user names in the archive.
tar -C dist --owner=0 --group=0 -czf "$OUT" trayupdater
echo "$OUT"
