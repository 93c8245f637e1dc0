"""CFO Desk entry point: page config and navigation. Run with `make run`.

Each page draws the shared sidebar itself (cfo_desk.ui.shell.frame).
"""

import streamlit as st

st.set_page_config(page_title="CFO Desk", page_icon=":material/finance:", layout="wide")

page = st.navigation(
    [
        st.Page("pages/chat.py", title="Chat", icon=":material/forum:", default=True),
        st.Page("pages/data.py", title="Data", icon=":material/table_view:"),
        st.Page("pages/artifacts.py", title="Artifacts", icon=":material/inventory_2:"),
        st.Page("pages/settings.py", title="Settings", icon=":material/tune:"),
    ]
)
page.run()
