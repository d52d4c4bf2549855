"""trayupdater: keep a server program running and up to date from GitHub Releases."""

__version__ = "0.1.0"
APP_NAME = "trayupdater"
