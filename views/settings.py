"""The settings page; drawing lives in cfo_desk.ui.settings."""

from cfo_desk.ui import settings, shell

shell.frame(settings.render)
