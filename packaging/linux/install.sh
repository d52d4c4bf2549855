#!/bin/sh
# Install trayupdater for the current user from an unpacked release folder:
#   tar xzf trayupdater_Linux_x86_64.tar.gz && ./trayupdater/install.sh
#   ./trayupdater/install.sh --uninstall
# Per-user on purpose: the app replaces its own folder when it updates itself, so that
# folder must be writable by the user who runs it (no root, no package manager).
set -eu

APP=trayupdater
SRC=$(cd "$(dirname "$0")" && pwd)
DATA_HOME=${XDG_DATA_HOME:-$HOME/.local/share}
DEST=${TRAYUPDATER_INSTALL_DIR:-$HOME/.local/opt/$APP}
BIN=$HOME/.local/bin
DESKTOP=$DATA_HOME/applications/$APP.desktop
ICON=$DATA_HOME/icons/hicolor/256x256/apps/$APP.png

if [ "${1:-}" = "--uninstall" ]; then
    if [ -x "$DEST/$APP" ]; then "$DEST/$APP" quit >/dev/null 2>&1 || true; fi
    rm -rf "$DEST" "$DEST.old" "$DEST.new" "$DEST.failed"
    rm -f "$BIN/$APP" "$DESKTOP" "$ICON"
    # The autostart entry the app itself created ("Start at login").
    rm -f "${XDG_CONFIG_HOME:-$HOME/.config}/autostart/$APP.desktop"
    echo "trayupdater removed (settings and data in ~/.config and ~/.local/share stay)"
    exit 0
fi

[ -x "$SRC/$APP" ] || { echo "install.sh: $SRC/$APP not found; run it from the unpacked release" >&2; exit 1; }
if [ "$SRC" != "$DEST" ]; then
    if [ -x "$DEST/$APP" ]; then "$DEST/$APP" quit >/dev/null 2>&1 || true; fi
    mkdir -p "$(dirname "$DEST")"
    # Copy next to the destination, then swap: a half-copied install is never run.
    rm -rf "$DEST.new"
    cp -a "$SRC" "$DEST.new"
    rm -rf "$DEST.old"
    if [ -e "$DEST" ]; then mv "$DEST" "$DEST.old"; fi
    mv "$DEST.new" "$DEST"
    rm -rf "$DEST.old"
fi

mkdir -p "$BIN" "$(dirname "$DESKTOP")" "$(dirname "$ICON")"
ln -sf "$DEST/$APP" "$BIN/$APP"
cp "$DEST/$APP.png" "$ICON"
sed "s|^Exec=$APP |Exec=$DEST/$APP |" "$DEST/$APP.desktop" > "$DESKTOP"
command -v update-desktop-database >/dev/null && update-desktop-database -q "$(dirname "$DESKTOP")" || true
echo "installed trayupdater $("$DEST/$APP" --version 2>/dev/null | cut -d' ' -f2) in $DEST"
echo "start it from the applications menu, or: $BIN/$APP run"
