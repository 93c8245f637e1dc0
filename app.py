"""CFO Desk entry point: page config and navigation. Run with `make run`.

Each page draws the shared sidebar itself (cfo_desk.ui.shell.frame). Page files live in views/, not
pages/: Streamlit treats a pages/ folder as a v1 multipage app and runs a deep-linked page file
without this script.
"""

import streamlit as st

# An emoji, not a :material/...: icon: those make the browser fetch the favicon from Google's font CDN.
st.set_page_config(page_title="CFO Desk", page_icon="📊", layout="wide")

page = st.navigation(
    [
        st.Page("views/chat.py", title="Chat", icon=":material/forum:", default=True),
        st.Page("views/data.py", title="Data", icon=":material/table_view:"),
        st.Page("views/artifacts.py", title="Artifacts", icon=":material/inventory_2:"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("views/settings.py", title="Settings", icon=":material/tune:"),
    ]
)
page.run()
