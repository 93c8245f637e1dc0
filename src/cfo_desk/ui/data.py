"""The Data page: per dataset its first rows, a column profile, row count and provenance."""

from __future__ import annotations

import streamlit as st

from cfo_desk.services import datasets as datasets_svc
from cfo_desk.services.errors import ServiceError
from cfo_desk.services.session import open_session
from cfo_desk.ui import state
from cfo_desk.ui.format import column_config, for_display, human_bytes, safe_code, safe_label, safe_markdown


def render() -> None:
    """Draw the Data page for the open workspace."""
    state.show_flashes()
    st.title("Data")
    ws_id = state.current_workspace_id()
    if ws_id is None:
        st.info("Open or create a workspace in the sidebar first.")
        return
    with open_session() as session:
        rows = datasets_svc.list_datasets(session=session, workspace_id=ws_id)
    if not rows:
        st.info("No datasets yet. Upload CSV or Excel files in the sidebar.")
        return
    names = {d.id: f"{d.table_name}  ·  {d.row_count:,} rows" for d in rows}
    chosen = st.selectbox("Dataset", options=list(names), format_func=names.get, key="data_pick")
    try:
        with open_session() as session:
            ds = datasets_svc.get_dataset(session=session, dataset_id=chosen)
            head = datasets_svc.dataset_preview(session=session, dataset_id=chosen, rows=50)
            profile = datasets_svc.dataset_profile(session=session, dataset_id=chosen)
    except ServiceError as exc:  # e.g. the workspace is busy with an upload in another process
        st.warning(str(exc), icon=":material/hourglass_top:")
        return

    a, b, c = st.columns(3)
    a.metric("Rows", f"{ds.row_count:,}")
    b.metric("Columns", len(ds.columns))
    c.metric("File size", human_bytes(ds.size_bytes))
    source = safe_label(ds.source_filename) + (f" — worksheet “{safe_label(ds.sheet_name)}”" if ds.sheet_name else "")
    st.caption(f"Table {safe_code(ds.table_name)} from **{source}** · sha256 `{ds.sha256}` · loaded {ds.created_at:%Y-%m-%d %H:%M} UTC")
    notes = ds.notes
    if notes:
        with st.expander(f"What ingest noticed ({len(notes)})", expanded=bool(ds.date_order)):
            for n in notes:
                st.markdown(f"- {safe_markdown(n)}")
    if ds.date_order:
        other = "MDY" if ds.date_order == "DMY" else "DMY"
        st.caption(f"Ambiguous dates ({safe_label(', '.join(ds.ambiguous_date_columns))}) were read as {ds.date_order}.")
        if st.button(f"Re-read dates as {other}", key="switch_dates"):
            try:
                with open_session() as session:
                    datasets_svc.set_date_order(session=session, dataset_id=ds.id, date_order=other)
            except ServiceError as exc:
                st.error(str(exc))
            else:
                st.rerun()

    _column_types(ds)

    st.subheader("First rows")
    head = for_display(head)
    st.dataframe(head, hide_index=True, column_config=column_config(head))
    st.subheader("Column profile")
    st.dataframe(profile, hide_index=True, column_config=column_config(profile))

    with st.popover("Delete dataset", icon=":material/delete:"):
        st.markdown(f"Delete {safe_code(ds.table_name)} and its uploaded file? Past answers keep their results.")
        if st.button("Delete", type="primary", key="delete_dataset"):
            try:
                with open_session() as session:
                    datasets_svc.delete_dataset(session=session, dataset_id=ds.id)
            except ServiceError as exc:
                st.error(safe_label(str(exc)))
            else:
                state.flash(f"Deleted dataset {safe_label(ds.table_name)}.", "info")
                st.rerun()



_ORDERS = {"DMY": "day first (31/12/2024)", "MDY": "month first (12/31/2024)", None: "ISO or month names only"}
_STYLES = {"us": "1,234.56", "eu": "1.234,56 (European)"}


def _column_types(ds) -> None:
    """Read one column as another type: the dataset is re-read from its kept file in one click."""
    chosen = ds.column_overrides
    raw = {f"{n}_raw" for n in chosen}
    names = [c["name"] for c in ds.columns if c["name"] not in raw]
    types = {c["name"]: c["type"] for c in ds.columns}
    with st.expander(f"Column types{f' ({len(chosen)} chosen)' if chosen else ''}", icon=":material/tune:"):
        st.caption(
            "Read a column as another type. The dataset is read again from its uploaded file; values that"
            " don't fit are empty there, and every value is kept as text in a column with `_raw` added to"
            " its name. A replacement upload of the same file keeps these choices."
        )
        col = st.selectbox(
            "Column",
            names,
            key=f"type_col_{ds.id}",
            format_func=lambda n: f"{n} · {types.get(n, '')}" + (" · chosen" if n in chosen else ""),
        )
        kinds = ["auto", *datasets_svc.COLUMN_TYPES]
        current = chosen.get(col, {})
        kind = st.selectbox(
            "Read as",
            kinds,
            index=kinds.index(current.get("type", "auto")),
            key=f"type_kind_{ds.id}_{col}",
            format_func=lambda k: "automatic (what ingest found)" if k == "auto" else datasets_svc.COLUMN_TYPES[k],
        )
        spec: dict | None = None if kind == "auto" else {"type": kind}
        if kind in ("date", "timestamp"):
            orders = list(_ORDERS)
            spec["date_order"] = st.selectbox(
                "Day and month", orders, index=orders.index(current.get("date_order")), key=f"type_order_{ds.id}_{col}",
                format_func=_ORDERS.get,
            )
        if kind in ("integer", "decimal", "double"):
            styles = list(_STYLES)
            spec["decimal"] = st.selectbox(
                "Number style", styles, index=styles.index(current.get("decimal") or "us"), key=f"type_style_{ds.id}_{col}",
                format_func=_STYLES.get,
            )
        if st.button("Re-read with this type", key=f"type_apply_{ds.id}", icon=":material/refresh:"):
            try:
                with open_session() as session:
                    datasets_svc.set_column_types(session=session, dataset_id=ds.id, overrides={col: spec})
            except (ServiceError, datasets_svc.IngestError) as exc:
                st.error(safe_label(str(exc)))
            else:
                what = "automatic" if spec is None else datasets_svc.COLUMN_TYPES[kind]
                state.flash(f"Re-read {safe_label(ds.table_name)} with {safe_label(col)} as {what}.")
                st.rerun()
