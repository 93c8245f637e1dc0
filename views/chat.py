"""The chat page; drawing lives in cfo_desk.ui.chat."""

from cfo_desk.ui import chat, shell

shell.frame(chat.render)
