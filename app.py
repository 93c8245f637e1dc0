"""CFO Desk entry point: page config, navigation, sidebar. Run with `make run`."""

import streamlit as st

from cfo_desk.ui import sidebar, state

st.set_page_config(page_title="CFO Desk", page_icon=":material/finance:", layout="wide")

page = st.navigation(
    [
        st.Page("pages/chat.py", title="Chat", icon=":material/forum:", default=True),
        st.Page("pages/data.py", title="Data", icon=":material/table_view:"),
        st.Page("pages/artifacts.py", title="Artifacts", icon=":material/inventory_2:"),
        st.Page("pages/settings.py", title="Settings", icon=":material/tune:"),
    ]
)
sidebar.render()
page.run()
state.sync_url()
