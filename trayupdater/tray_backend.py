"""The native tray icon: which pystray backend can show a menu here, and small fixes to it.

``tray_available`` decides (before pystray is imported, which picks a backend at import
and raises without a display) whether a tray icon with a working menu can be shown;
``create_icon`` makes the icon, with two fixes to pystray's GTK backend: the title is
also the tooltip, and an open menu is refreshed in place when the status changes
(pystray rebuilds a new, unseen menu instead: pystray issue 35).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pystray

log = logging.getLogger(__name__)

APP_ID = "trayupdater"
# Backends whose menus work; xorg has none (and its clicks never arrive), dummy is a stub.
_MENU_BACKENDS = {"appindicator", "gtk", "darwin", "win32"}


def create_icon(*args: Any, **kwargs: Any) -> pystray.Icon:
    if "pystray" not in sys.modules and "PYSTRAY_BACKEND" not in os.environ:
        tray_available()  # picks the backend before pystray picks xorg on its own
    import pystray

    cls: type[pystray.Icon] = pystray.Icon
    if cls.__module__ == "pystray._gtk":
        cls = _gtk_icon(cls)
    elif cls.__module__ == "pystray._darwin":
        cls = _darwin_icon(cls)
    return cls(*args, **kwargs)


def uses_template_images() -> bool:
    """macOS menu bars want monochrome template images (icons.template_image)."""
    return sys.platform == "darwin"


def _darwin_icon(base: type[pystray.Icon]) -> type[pystray.Icon]:
    class MenuBarIcon(base):  # type: ignore[valid-type, misc]
        def _assert_image(self) -> None:
            super()._assert_image()
            mark_template(self._icon_image, self.icon)

    return MenuBarIcon


def mark_template(native_image: Any, image: Any) -> None:
    """Tell AppKit an NSImage is a template when the PIL image says it is one."""
    if native_image is not None and getattr(image, "info", {}).get("template"):
        native_image.setTemplate_(True)


def _gtk_icon(base: type[pystray.Icon]) -> type[pystray.Icon]:
    from pystray._util.gtk import mainloop

    class GtkTrayIcon(base):  # type: ignore[valid-type, misc]
        @mainloop
        def _update_title(self) -> None:
            # GtkStatusIcon's title is only the accessible name: show it as tooltip too.
            self._status_icon.set_title(self.title)
            self._status_icon.set_tooltip_text(self.title)

        def _show(self) -> None:
            super()._show()
            self._update_title()  # pystray applies a title given at construction nowhere

        @mainloop
        def _update_menu(self) -> None:
            shown = getattr(self, "_menu_handle", None)  # None before the first build
            if shown is not None and shown.get_visible() and refresh_in_place(shown, self.menu):
                shown.reposition()  # a longer label widens it: keep it on the screen
                return
            self._menu_handle = self._create_menu(self.menu)

    return GtkTrayIcon


def refresh_in_place(gtk_menu: Any, descriptors: Any) -> bool:
    """Update the labels and sensitivity of an open Gtk.Menu to ``descriptors``.

    Only when the shape is the same (kinds of items, submenus, check states: setting a
    check state would fire its action); False means "rebuild instead".
    """
    pairs = _matching_pairs(gtk_menu, descriptors)
    if pairs is None:
        return False
    _apply_labels(pairs)
    return True


def _matching_pairs(gtk_menu: Any, descriptors: Any) -> list[tuple[Any, Any, Any]] | None:
    from gi.repository import Gtk
    from pystray import Menu

    widgets = list(gtk_menu.get_children())
    items = list(descriptors)
    if len(widgets) != len(items):
        return None
    pairs: list[tuple[Any, Any, Any]] = []
    for widget, item in zip(widgets, items, strict=True):
        separator = item is Menu.SEPARATOR
        if separator != isinstance(widget, Gtk.SeparatorMenuItem):
            return None
        if separator:
            continue
        if (item.checked is not None) != isinstance(widget, Gtk.CheckMenuItem):
            return None
        if item.checked is not None and widget.get_active() != item.checked:
            return None
        sub = None
        if item.submenu:
            if widget.get_submenu() is None:
                return None
            sub = _matching_pairs(widget.get_submenu(), item.submenu)
            if sub is None:
                return None
        elif widget.get_submenu() is not None:
            return None
        pairs.append((widget, item, sub))
    return pairs


def _apply_labels(pairs: list[tuple[Any, Any, Any]]) -> None:
    from gi.repository import GLib

    for widget, item, sub in pairs:
        if item.default:
            widget.get_child().set_markup(f"<b>{GLib.markup_escape_text(item.text)}</b>")
        elif widget.get_label() != item.text:
            widget.set_label(item.text)
        widget.set_sensitive(item.enabled)
        if sub is not None:
            _apply_labels(sub)


def tray_available(*, host_timeout: float = 5.0) -> tuple[bool, str]:
    """Can a tray icon with a working menu be shown here? ``(False, why)`` if not.

    On Linux this needs a display, PyGObject with GTK 3, a D-Bus session bus and a tray
    host: a StatusNotifierItem watcher (KDE, GNOME with the AppIndicator extension) for
    the AppIndicator backend, or an XEmbed tray (``_NET_SYSTEM_TRAY_S0``) for the GTK
    backend. It sets ``PYSTRAY_BACKEND`` accordingly, so call it before importing
    pystray. At login the panel may start after us: wait up to ``host_timeout`` seconds
    for a tray host to appear.
    """
    if "pystray" in sys.modules:
        backend = sys.modules["pystray"].Icon.__module__.rsplit("._", 1)[-1]
        if backend in _MENU_BACKENDS:
            return True, f"pystray backend {backend}"
        return False, f"pystray is already loaded with the {backend} backend, which has no menu"
    chosen = os.environ.get("PYSTRAY_BACKEND", "")
    if chosen and chosen not in _MENU_BACKENDS:
        return False, f"PYSTRAY_BACKEND={chosen} has no usable menu"
    if sys.platform in ("darwin", "win32"):
        return _importable(chosen or sys.platform)
    return _linux_tray(chosen, host_timeout)


def _importable(backend: str) -> tuple[bool, str]:
    os.environ["PYSTRAY_BACKEND"] = backend
    try:
        import pystray  # noqa: F401
    except Exception as exc:  # Xlib and PyObjC raise their own types, not ImportError
        return False, f"cannot load the pystray {backend} backend: {exc}"
    return True, f"pystray backend {backend}"


def _linux_tray(chosen: str, host_timeout: float) -> tuple[bool, str]:
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    os.environ.setdefault("NO_AT_BRIDGE", "1")  # no accessibility bus warnings on stderr
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gio, GLib, Gtk
    except (ImportError, ValueError) as exc:
        return False, f"PyGObject with GTK 3 is not installed ({exc})"
    GLib.set_prgname(APP_ID)  # the window class desktops and tests know the icon by
    if not Gtk.init_check()[0]:
        return False, "GTK cannot open the display"
    try:
        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
    except GLib.Error as exc:
        return False, f"no D-Bus session bus ({exc.message})"
    has_indicator = _appindicator_importable()
    deadline = time.monotonic() + host_timeout
    while True:
        sni = _dbus_name_has_owner(bus, "org.kde.StatusNotifierWatcher")
        xembed = _xembed_tray_present()
        if chosen:
            backend = chosen
            found = sni or xembed if chosen == "appindicator" else xembed
        else:
            # AppIndicator where a watcher exists (GNOME cannot show XEmbed icons at all);
            # plain GTK on an XEmbed tray, which every other Linux panel provides.
            backend = "appindicator" if sni and has_indicator else "gtk"
            found = (sni and has_indicator) or xembed
        if found:
            break
        if time.monotonic() >= deadline:
            return False, "no system tray host found (no StatusNotifierWatcher, no XEmbed tray)"
        time.sleep(0.25)
    return _importable(backend)


def _appindicator_importable() -> bool:
    import gi

    for name in ("AyatanaAppIndicator3", "AppIndicator3"):
        try:
            gi.require_version(name, "0.1")
        except ValueError:
            continue
        return True
    return False


def _dbus_name_has_owner(bus: Any, name: str) -> bool:
    from gi.repository import Gio, GLib

    try:
        reply = bus.call_sync(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            GLib.Variant("(s)", (name,)),
            GLib.VariantType("(b)"),
            Gio.DBusCallFlags.NONE,
            2000,
            None,
        )
    except GLib.Error:
        return False
    return bool(reply.unpack()[0])


def _xembed_tray_present() -> bool:
    if not os.environ.get("DISPLAY"):
        return False
    try:
        from Xlib import X, display
    except ImportError:
        return False
    try:
        conn = display.Display()
    except Exception:  # python-xlib raises several unrelated types for a bad display
        return False
    try:
        atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
        return conn.get_selection_owner(atom) != X.NONE
    finally:
        conn.close()
