"""The artifacts page; drawing lives in cfo_desk.ui.artifacts."""

from cfo_desk.ui import artifacts, shell

shell.frame(artifacts.render)
