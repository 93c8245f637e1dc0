"""The compare page; drawing lives in cfo_desk.ui.compare."""

from cfo_desk.ui import compare, shell

shell.frame(compare.render)
