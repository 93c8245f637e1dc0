"""The data page; drawing lives in cfo_desk.ui.data."""

from cfo_desk.ui import data, shell

shell.frame(data.render)
