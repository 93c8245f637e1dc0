"""What the model is told about the data: ingest notes, date ranges, where the data ends, the
currency where known (captured from the instructions a FunctionModel receives; real DuckDB)."""

from __future__ import annotations

from datetime import date

from agent_script import output_call, scripted
from pydantic_ai.messages import ModelResponse

from cfo_desk.agent.core import overview_text
from cfo_desk.services import samples, threads as threads_svc, turns
from cfo_desk.services.datasets import list_datasets, upload_file
from cfo_desk.services.workspaces import create_workspace

BANK = (
    "Date,Description,Amount\n"
    "31/01/2024,Card payment,\"$1,234.56\"\n"
    "15/02/2024,Refund,($20.00)\n"
    "28/03/2024,Fee,$3.50\n"
).encode()


def _instructions(session, thread_id: int) -> str:
    seen: list[str] = []

    def plan(messages, info):
        seen.append(info.instructions or "")
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "ok"})])

    turns.ask(session=session, thread_id=thread_id, content="What changed last month?", model=scripted(plan))
    return seen[0]


def test_the_model_is_told_the_ingest_notes_date_ranges_and_where_the_data_ends(session):
    ws = create_workspace(session=session, name="Bank")
    (ds,) = upload_file(session=session, workspace_id=ws.id, filename="bank.csv", data=BANK)
    assert ds.date_ranges == {"date": ["2024-01-31", "2024-03-28"]}
    thread = threads_svc.create_thread(session=session, workspace_id=ws.id)
    text = _instructions(session, thread.id)
    assert "The data ends on 2024-03-28 (latest date on or before today, in bank.date)" in text
    assert "against where the data ends, not against today" in text
    assert "dates date 2024-01-31..2024-03-28" in text
    for note in ds.notes:  # e.g. the day/month order assumed, $ and parentheses read as numbers
        assert note[:60] in text
    assert any("after removing $" in n and "(123.45) read as -123.45" in n for n in ds.notes), ds.notes
    assert "currency not named; values carried $" in text


def test_the_sample_workspace_states_usd_from_its_column_names(session):
    ws = samples.load_sample_workspace(session=session)
    subs = next(d for d in list_datasets(session=session, workspace_id=ws.id) if d.table_name == "subscriptions")
    assert subs.date_ranges["start_date"][1] <= "2024-12-31" and subs.date_ranges["end_date"][1] <= "2024-12-31"
    thread = threads_svc.create_thread(session=session, workspace_id=ws.id)
    text = _instructions(session, thread.id)
    assert "currency USD (column names: mrr_usd, list_price_usd)" in text
    assert "The data ends on 2024-12-30" in text  # the latest date in any file (a subscription start)


def test_dates_after_today_do_not_move_the_end_of_the_data():
    class D:
        table_name, source, row_count, notes = "contracts", "c.csv", 2, ()
        columns = [("signed", "DATE"), ("ends", "DATE")]
        date_ranges = {"signed": ["2024-01-01", "2024-06-30"], "ends": ["2025-01-01", "2029-12-31"]}

    text = overview_text("ws", [D()], today=date(2025, 3, 1))
    assert "The data ends on 2025-01-01" not in text and "The data ends on 2024-06-30" in text


def test_the_glossary_goes_into_the_instructions_and_each_turn_records_its_version(session):
    from cfo_desk.services import glossary as glossary_svc

    ws = samples.load_sample_workspace(session=session)
    glossary_svc.set_term(session=session, workspace_id=ws.id, term="Active customer", definition="paid in the month")
    thread = threads_svc.create_thread(session=session, workspace_id=ws.id)
    seen: list[str] = []

    def plan(messages, info):
        seen.append(info.instructions or "")
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "ok", "glossary_terms": ["Active customer"]})])

    first = turns.ask(session=session, thread_id=thread.id, content="Active customers in December 2024?", model=scripted(plan))
    assert "Workspace glossary (version 1)" in seen[-1] and "- Active customer: paid in the month" in seen[-1]
    assert first.glossary_version == 1 and first.output["glossary_terms"] == ["Active customer"]

    glossary_svc.set_term(session=session, workspace_id=ws.id, term="active customer", definition="an active subscription at month end")
    second = turns.ask(session=session, thread_id=thread.id, content="And now?", model=scripted(plan))
    assert "- active customer: an active subscription at month end" in seen[-1] and "paid in the month" not in seen[-1]
    assert second.glossary_version == 2
    from cfo_desk.storage.models import Message

    assert session.get(Message, first.id).glossary_version == 1  # what the first turn was told stays readable
    told = glossary_svc.current_glossary(session=session, workspace_id=ws.id, version=first.glossary_version)
    assert told.find("Active customer").definition == "paid in the month"
