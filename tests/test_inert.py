"""Untrusted text is inert: no string from a model, a file, a column name or a user makes the
analyst's browser fetch anything, link anywhere or render HTML (cfo_desk.ui.format).

The unit tests feed `safe_markdown` (answers, clarifications, notes, errors) and `safe_label` (button,
metric, expander, status and popover labels, help, titles, names) every Markdown image and link form
and check the output can't form one. What Streamlit's frontend really does with these forms was
checked in chromium (tests/test_browser_inert.py); the rules below are the ones that held there.
The AppTest journey then drives the app with a scripted model that answers with those forms
everywhere it can write, and checks every element the page draws.
"""

from __future__ import annotations

import re

import pytest
from agent_script import output_call, scripted, turn_returns
from google.protobuf.json_format import MessageToDict
from pydantic_ai.messages import ModelResponse, ToolCallPart
from test_ui import app, create_workspace, settle

from cfo_desk.agent.core import use_model
from cfo_desk.ui.format import ZWSP, safe_code, safe_label, safe_markdown

U = "http://127.0.0.2:9"  # nothing listens there; the browser test runs a real one

# Every image and link form (and HTML, data URIs, escaped and nested variants) as a model, a file
# or a user could write it. Each name says what a renderer would make of the raw text.
FORMS = {
    "inline image": f"a ![x]({U}/inline.png) b",
    "inline image with title": f'![x]({U}/title.png "t")',
    "inline image, angle destination": f"![x]( <{U}/angle.png> )",
    "inline image, empty alt": f"![]({U}/empty.png)",
    "reference image": f"see ![x][r]\n\n[r]: {U}/ref.png",
    "reference image, upper-case label": f"![x][R]\n\n[r]: {U}/ref2.png",
    "collapsed reference image": f"![r][]\n\n[r]: {U}/coll.png",
    "shortcut reference image": f"![r]\n\n[r]: {U}/short.png",
    "definition with destination on the next line": f"![x][r]\n\n[r]:\n{U}/refnl.png 'title'",
    "indented definition": f"![x][r]\n\n   [r]: <{U}/indent.png>",
    "definition before use": f"[r]: {U}/before.png\n\n![x][r]",
    "brackets inside alt": f"![a [b] c]({U}/nested.png)",
    "image inside link": f"[![x]({U}/linkimg.png)]({U}/l)",
    "newline between ] and (": f"![x]\n({U}/nl.png)",
    "escaped bang": f"\\![x]({U}/esc.png)",
    "escaped bracket": f"!\\[x]({U}/esc2.png)",
    "escaped backslash before bang": f"\\\\![x]({U}/esc3.png)",
    "image in a table cell split by a pipe in code": f"| a | b |\n|---|---|\n| `x | ![x]({U}/cell.png) y` | z |",
    "image in a code span": f"`![x]({U}/code.png)`",
    "image in a list and a quote": f"- ![x]({U}/list.png)\n> ![y]({U}/quote.png)",
    "image in a heading": f"# ![x]({U}/h.png)",
    "data URI image": "![x](data:image/svg+xml;base64,PHN2ZyB4bWxucz0naHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4=)",
    "data URI reference": "![x][d]\n\n[d]: data:image/png;base64,iVBORw0KGgo=",
    "inline link": f"[click]({U}/click?d=312109.50)",
    "reference link": f"[click][r]\n\n[r]: {U}/reflink",
    "footnote": f"note[^1]\n\n[^1]: {U}/foot",
    "autolink": f"<{U}/auto>",
    "e-mail autolink": "<leak@127.0.0.2>",
    "bare URL": f"{U}/bare",
    "bare https and www": "https://127.0.0.2/s and www.example.com",
    "bare e-mail": "write to cfo@example.com",
    "HTML img": f'<img src="{U}/html.png">',
    "HTML img, upper case": f"<IMG SRC={U}/upper.png>",
    "HTML iframe": f'<iframe src="{U}/iframe"></iframe>',
    "HTML svg image": f'<svg><image href="{U}/svg.png"/></svg>',
    "HTML picture": f'<picture><source srcset="{U}/pic.png"><img src="{U}/pic2.png"></picture>',
    "HTML style import": f"<style>@import url({U}/style.css)</style>",
    "HTML link stylesheet": f'<link rel="stylesheet" href="{U}/l.css">',
    "HTML video poster": f'<video poster="{U}/poster.png"></video>',
    "HTML comment hiding nothing": f"<!-- x --><img src={U}/c.png>",
    "KaTeX graphics": f"$\\includegraphics{{{U}/katex.png}}$ and $\\href{{{U}/h}}{{x}}$",
}

# What a renderer needs to make an image, a link or HTML. None may be left in safe_markdown's output.
NOT_INERT = {
    "image opener `![`": re.compile(r"!\["),
    "inline link or image destination `](`": re.compile(r"\]\("),
    "reference definition `]:`": re.compile(r"\]:"),
    "HTML tag or autolink `<x`": re.compile(r"<(?=[A-Za-z/!?])|<[^\s<>]*@"),
    "bare URL (GFM autolinks it)": re.compile(r"(?i)https?://|www\."),
    "bare e-mail (GFM autolinks it)": re.compile(r"@[-\w]"),
}


def _escaped(text: str, at: int) -> bool:
    """Whether the character at `at` is backslash-escaped (an odd run of backslashes before it)."""
    run = len(text[:at]) - len(text[:at].rstrip("\\"))
    return run % 2 == 1


def not_inert(text: str) -> list[str]:
    """The constructs left in `text` that a Markdown renderer could turn into an image, link or HTML
    (an escaped first character, as in safe_label's `\\](`, makes it plain text)."""
    return [name for name, pattern in NOT_INERT.items() if any(not _escaped(text, m.start()) for m in pattern.finditer(text))]


@pytest.mark.parametrize("form", FORMS)
def test_every_image_and_link_form_is_made_inert(form):
    raw = FORMS[form]
    assert not_inert(raw), f"the raw form should be caught by the checks: {raw!r}"  # the check can fail
    out = safe_markdown(raw)
    assert not_inert(out) == [], (form, out)
    assert "127.0.0.2" not in out or ZWSP in out or "&lt;" in out or "\\" in out


@pytest.mark.parametrize("form", FORMS)
def test_every_form_inside_formatting_is_inert(form):
    """The same forms inside bold, a list item, a table cell and a blockquote, and glued to text."""
    raw = FORMS[form].replace("\n", " ")
    for text in (f"**{raw}**", f"- item {raw}", f"| c |\n|---|\n| {raw} |", f"> {raw}", f"x{raw}y"):
        assert not_inert(safe_markdown(text)) == [], text


def test_readable_rewrites_keep_the_words():
    assert safe_markdown(f"MRR ![chart of MRR]({U}/c.png) rose") == "MRR [image removed: chart of MRR] rose"
    assert safe_markdown(f"see ![x][r]\n\n[r]: {U}/ref.png") == "see [image removed: x]\n\n"
    assert safe_markdown(f"[the docs]({U}/docs)") == f"the docs (http{ZWSP}://127.0.0.2:9/docs)"
    assert safe_markdown("a <b>bold</b> word") == "a bold word"
    assert safe_markdown("x < 5 and y > 3") == "x < 5 and y > 3"  # comparisons stay
    assert safe_markdown("DESCRIBE <table_name> first") == "DESCRIBE &lt;table_name> first"  # shown as text, not dropped


def test_ordinary_formatting_stays():
    answer = (
        "## MRR, December 2024\n\n**$312,109.50** (*up 3%*), from `q1`.\n\n"
        "1. New: 12\n2. Churned: 3\n\n| month | mrr |\n|---|---:|\n| 2024-12 | 312,109.50 |\n\n"
        "```sql\nSELECT sum(mrr) FROM subscriptions\n```\n\n> Assumes active on the last day. :material/info:"
    )
    assert safe_markdown(answer) == answer


def test_markdown_is_idempotent_enough_to_apply_twice():
    for raw in FORMS.values():
        once = safe_markdown(raw)
        assert not_inert(safe_markdown(once)) == []


def _unescape(label: str) -> str:
    """What Markdown shows for a label: backslash escapes of punctuation undone, zero-width spaces gone."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", label).replace(ZWSP, "")


SPECIAL = set("\\`*_~[]<>&$|")


def _unescaped_specials(label: str) -> list[str]:
    out, i = [], 0
    while i < len(label):
        if label[i] == "\\":
            i += 2
            continue
        if label[i] in SPECIAL:
            out.append(label[i])
        i += 1
    return out


@pytest.mark.parametrize("form", FORMS)
def test_labels_show_the_literal_text(form):
    raw = FORMS[form]
    out = safe_label(raw)
    assert "\n" not in out
    assert _unescaped_specials(out) == [], out
    assert _unescape(out) == " ".join(raw.split())  # the analyst reads exactly what was written
    assert not re.search(r"(?i)https?://|www\.|@[-\w]|:[A-Za-z]", out), out  # no autolink, no :icon:


def test_labels_of_names():
    assert safe_label("Acme FP&A") == "Acme FP\\&A"
    assert safe_label("What was MRR in December 2024?") == "What was MRR in December 2024?"
    assert _unescape(safe_label(":material/home: **Q3** `x` $5 and $6 <b>")) == ":material/home: **Q3** `x` $5 and $6 <b>"
    assert safe_label("# Heading") == "\\# Heading" and safe_label("1. item") == "1\\. item" and safe_label("- x") == "\\- x"
    assert safe_label("two\nlines") == "two lines"
    assert safe_code("revenue_2024") == "`revenue_2024`"
    assert safe_code("a`b ![x](http://e/i.png)") == safe_label("a`b ![x](http://e/i.png)")


# --------------------------------------------------------------------------- the app, end to end

ATTACKS = " ".join(
    FORMS[k].replace("\n", " ")
    for k in ("inline image", "reference image", "collapsed reference image", "shortcut reference image", "autolink", "HTML img", "inline link", "bare URL")
)
ANSWER = "**MRR** was $1.\n\n" + "\n\n".join(FORMS.values())
WS_NAME = f"WSNAME ![w]({U}/w.png) ![v][r] <img src=/i>"
PLAIN_ELEMENTS = {"code", "arrow_data_frame", "text_input", "chat_input", "download_button", "selectbox", "data_frame", "file_uploader"}


def _strings(node, out: list[tuple[str, str]]) -> None:
    """Every string an element of the tree carries (labels, bodies, help, values), with its type."""
    proto = getattr(node, "proto", None)
    kind = getattr(node, "type", "")
    if proto is not None and kind not in PLAIN_ELEMENTS:
        def walk(value, key=""):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, k)
            elif isinstance(value, list):
                for v in value:
                    walk(v, key)
            elif isinstance(value, str) and key not in ("id", "formId", "key", "sql", "language", "placeholder", "icon", "defaultValue"):
                if kind in ("text_area", "text_input") and key in ("default", "value"):
                    return  # what an input box holds is shown as plain text in it (the edit box holds the question)
                out.append((f"{kind}.{key}", value))

        try:
            walk(MessageToDict(proto))
        except Exception:  # pragma: no cover - a proto MessageToDict can't read
            pass
    for child in getattr(node, "children", {}).values():
        _strings(child, out)


def shown(at) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    _strings(at._tree, out)
    return out


def assert_inert(at) -> list[str]:
    """No string any element carries can form an image, a link or HTML; returns them all."""
    bad = [(where, text) for where, text in shown(at) if not_inert(text)]
    assert bad == [], "\n".join(f"{w}: {t!r}" for w, t in bad[:20])
    return [t for _w, t in shown(at)]


def test_untrusted_text_is_inert_everywhere_in_the_app():
    """Workspace name, CSV header, question (thread title), run_sql purpose, answer, key figures
    (label, unit, period), assumptions, clarification question and options: all carry every form."""

    def plan(messages, info):
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        prompt = str(messages[-1].parts[-1].content) if messages else ""
        if "clarify" in prompt:
            return ModelResponse(
                parts=[output_call(info, "Clarification", {"question": "CLARIFYQ " + ANSWER, "options": ["OPTION1 " + ATTACKS, f"OPTION2 ![o][r] [r]: {U}/o.png"]})]
            )
        if not returns:
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "PURPOSE " + ATTACKS, "sql": "SELECT 42 AS answer"})])
        return ModelResponse(
            parts=[
                output_call(
                    info,
                    "FinalAnswer",
                    {
                        "answer_markdown": "ANSWERTEXT " + ANSWER,
                        "key_figures": [{"label": "FIGLABEL " + ATTACKS, "value": 42, "unit": f"![u]({U}/unit.png)", "period": ATTACKS, "query": "q1"}],
                        "assumptions": ["ASSUMPTION " + ATTACKS],
                    },
                )
            ]
        )

    use_model(scripted(plan))
    at = app()
    create_workspace(at, WS_NAME)  # names are at most 120 characters
    header = f'"H ![h]({U}/h.png) ![g][r] <img src={U}/hh.png>",amount\nx,1\n'.encode()
    at.sidebar.file_uploader[0].set_value(("upload.csv", header, "text/csv")).run()
    assert not at.exception, at.exception
    at.chat_input[0].set_value("QUESTION " + ATTACKS).run()
    settle(at)
    assert not at.exception, at.exception
    texts = assert_inert(at)
    joined = "\n".join(texts)
    picker = at.sidebar.selectbox[0]  # a plain-text widget (checked in chromium): the name as typed
    assert picker.format_func(picker.value) == WS_NAME
    for marker in ("QUESTION", "ANSWERTEXT", "FIGLABEL", "ASSUMPTION", "PURPOSE", "image removed"):
        assert marker in joined, marker  # each untrusted string did reach the page
    assert any("FIGLABEL" in m.label for m in at.metric) and "image removed" not in at.metric[0].value

    # The workspace name in the delete dialog and the CSV header in the ingest note (Data page).
    at.button(key="delete_ws").click().run()
    assert any("WSNAME" in t for t in assert_inert(at))
    at.button(key="cancel_delete_ws").click().run()
    at.switch_page("views/data.py").run()
    assert not at.exception, at.exception
    assert any("stored as" in t or "Header" in t for t in assert_inert(at))

    # The Artifacts page: the result's title (the run_sql purpose) and its question.
    at.switch_page("views/artifacts.py").run()
    assert not at.exception, at.exception
    assert any("PURPOSE" in t for t in assert_inert(at)) and any("QUESTION" in t for t in assert_inert(at))

    # A clarification: its question and the option buttons.
    at.switch_page("views/chat.py").run()
    at.chat_input[0].set_value("please clarify " + ATTACKS).run()
    settle(at)
    assert not at.exception, at.exception
    texts = assert_inert(at)
    assert any("CLARIFYQ" in t for t in texts)
    options = [b for b in at.button if b.key and b.key.startswith("option_")]
    assert len(options) == 2 and all(not not_inert(b.label) for b in options)

    # A fork: its title, the "Forked from" caption and the flash name the source thread's title.
    [b for b in at.button if b.key and b.key.startswith("fork_")][0].click().run()
    assert not at.exception, at.exception
    joined = "\n".join(assert_inert(at))
    assert "Forked from" in joined and "Forked into" in joined and "QUESTION" in joined


def test_failed_turn_with_progress_errors_is_inert():
    """A failed turn shows its error and the steps it took, among them the SQL error that echoes the
    model's SQL (a table name carrying an image here)."""

    def plan(messages, info):
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        if not returns:
            sql = f'SELECT * FROM "SQLERR ![e]({U}/e.png) ![f][r] <img src={U}/g.png>"'
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "PURPOSE " + ATTACKS, "sql": sql})])
        raise RuntimeError("FAILMSG " + ATTACKS)

    use_model(scripted(plan))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("Anything?").run()
    settle(at)
    assert not at.exception, at.exception
    joined = "\n".join(assert_inert(at))
    assert "FAILMSG" in joined and "SQLERR" in joined and "failed; the agent will try again" in joined
