"""Check one spreadsheet formula before it is written into a workbook.

A formula is tokenised by openpyxl's `Tokenizer` (the library's Excel grammar, never a regex over
the formula), every token is classified, and the formula is then parsed by the `formulas` engine's
own parser as a syntax check. What passes:

- functions on `ALLOWED_FUNCTIONS` (arithmetic, aggregation, lookups, dates, logic, text, a few
  financial functions). `REFUSED_FUNCTIONS` are refused with their reason (links, web requests,
  DDE/code execution, references built from text, volatile functions); any other known Excel
  function is "not on the allow-list"; anything else is an unknown function;
- references to cells and rectangular ranges (`B3`, `$B$3`, `B2:B13`) on the formula's own sheet
  or on a sheet of the workbook (`'MRR data'!B2:B13`), and the workbook's named inputs (`Growth`).

Refused with a sentence naming what was refused: external workbooks (`[1]Sheet1!A1`,
`'C:\\x\\[a.xlsx]Sheet'!A1`, URLs), DDE links (`=cmd|' /C calc'!A0`), unknown sheets, names that
are not named inputs, 3-D references (`Sheet1:Sheet3!A1`), whole columns or rows (`B:B`, `2:2`),
table and spill references (`Table1[Col]`, `A1#`), the implicit-intersection operator `@`, text
literals over 255 characters, nesting deeper than Excel's 64 levels, formulas over
`MAX_FORMULA_CHARS`.

The checked formula is re-rendered from its tokens: function names upper-cased (newer ones such
as XLOOKUP get Excel's `_xlfn.` prefix, which the file format needs), sheet names quoted and in
the workbook's own spelling, cell references upper-cased, named inputs in their declared case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import formulas
from openpyxl.formula.tokenizer import Token, Tokenizer, TokenizerError
from openpyxl.utils.cell import column_index_from_string
from openpyxl.utils.formulas import FORMULAE

__all__ = [
    "ALLOWED_FUNCTIONS", "EXCEL_MAX_COLUMNS", "EXCEL_MAX_ROWS", "FormulaRefused", "CheckedFormula",
    "MAX_FORMULA_CHARS", "MAX_FORMULA_NESTING", "MAX_TEXT_LITERAL_CHARS", "REFUSED_FUNCTIONS",
    "Reference", "check_formula", "parse_area", "quote_sheet",
]

EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_COLUMNS = 16_384  # column XFD
MAX_FORMULA_CHARS = 2_000
"""A formula (with its leading '=') may have at most this many characters (Excel allows 8,192)."""
MAX_FORMULA_NESTING = 64
"""Function calls and parentheses nest at most this deep (Excel's own limit)."""
MAX_TEXT_LITERAL_CHARS = 255
"""A text literal inside a formula ("...") may have at most this many characters (Excel's limit)."""

# Functions a workbook formula may use. Every one is computed by the `formulas` engine (the
# preview) and, except XLOOKUP/XMATCH, by LibreOffice 7.4 (the tests' recalculation).
ALLOWED_FUNCTIONS: frozenset[str] = frozenset(
    """
    SUM SUMIF SUMIFS SUMPRODUCT PRODUCT AVERAGE AVERAGEIF AVERAGEIFS MEDIAN MIN MAX MINIFS MAXIFS
    COUNT COUNTA COUNTBLANK COUNTIF COUNTIFS ABS ROUND ROUNDUP ROUNDDOWN INT MOD POWER SQRT EXP LN
    LOG LOG10 SIGN CEILING FLOOR
    IF IFERROR IFNA IFS AND OR NOT TRUE FALSE ISBLANK ISNUMBER ISTEXT ISERROR NA
    INDEX MATCH XLOOKUP XMATCH VLOOKUP HLOOKUP CHOOSE ROW ROWS COLUMN COLUMNS
    DATE YEAR MONTH DAY EOMONTH EDATE DAYS WEEKDAY
    TEXT CONCATENATE CONCAT LEFT RIGHT MID LEN UPPER LOWER TRIM VALUE
    NPV IRR XNPV XIRR PMT PV FV RATE
    """.split()
)

# Functions newer than Excel 2007 must be stored with this prefix, or Excel shows #NAME?.
_XLFN_FUNCTIONS = frozenset({"XLOOKUP", "XMATCH", "IFNA", "IFS", "MINIFS", "MAXIFS", "CONCAT", "DAYS"})

_LINK = "it opens a link when the cell is clicked"
_WEB = "it fetches data from the internet"
_CODE = "it runs code or talks to another program"
_DYNAMIC = "it builds references from text or offsets, so they cannot be checked; use INDEX/MATCH"
_ENV = "it reveals the file's path or the computer's environment"
_VOLATILE = "it is volatile: the figures would change every time the file is opened"

REFUSED_FUNCTIONS: dict[str, str] = {
    "HYPERLINK": _LINK,
    "WEBSERVICE": _WEB, "FILTERXML": _WEB, "ENCODEURL": _WEB, "IMAGE": _WEB, "STOCKHISTORY": _WEB,
    "RTD": _CODE, "DDE": _CODE, "DDEAUTO": _CODE, "CALL": _CODE, "REGISTER": _CODE,
    "REGISTER.ID": _CODE, "EXEC": _CODE, "PY": _CODE, "EVALUATE": _CODE,
    "INDIRECT": _DYNAMIC, "OFFSET": _DYNAMIC,
    "INFO": _ENV, "CELL": _ENV,
    "TODAY": _VOLATILE, "NOW": _VOLATILE, "RAND": _VOLATILE, "RANDBETWEEN": _VOLATILE, "RANDARRAY": _VOLATILE,
}

# Excel functions openpyxl's list (Excel 2007) does not know, so that they are "not allowed"
# rather than "unknown".
_NEWER_FUNCTIONS = frozenset(
    """
    XLOOKUP XMATCH IFNA IFS MINIFS MAXIFS CONCAT DAYS TEXTJOIN SWITCH LET LAMBDA FILTER SORT SORTBY
    UNIQUE SEQUENCE RANDARRAY WEBSERVICE FILTERXML ENCODEURL IMAGE STOCKHISTORY PY TEXTBEFORE
    TEXTAFTER TEXTSPLIT VSTACK HSTACK TAKE DROP CHOOSECOLS CHOOSEROWS TOCOL TOROW WRAPROWS WRAPCOLS
    EXPAND MAP REDUCE SCAN MAKEARRAY BYROW BYCOL ISOMITTED ARRAYTOTEXT VALUETOTEXT FORMULATEXT
    SHEET SHEETS ISFORMULA DDE DDEAUTO EVALUATE EXEC
    """.split()
)


class FormulaRefused(ValueError):
    """A formula that may not be written; `reason` is one sentence for the model to act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    """One reference of a formula: a rectangle of cells (1-based, inclusive) on `sheet` (the
    workbook's spelling; the formula's own sheet when it had no prefix), or a named input
    (`name` set, the rectangle left at 0)."""

    sheet: str | None
    min_col: int = 0
    min_row: int = 0
    max_col: int = 0
    max_row: int = 0
    name: str | None = None


@dataclass(frozen=True)
class CheckedFormula:
    """A formula that passed: `text` is what gets written (normalised, starts with '='),
    `functions` the functions it calls (upper case, no prefix), `references` what it reads."""

    text: str
    functions: tuple[str, ...]
    references: tuple[Reference, ...]


def quote_sheet(name: str) -> str:
    """A sheet name as a formula writes it: always in single quotes, inner quotes doubled."""
    return "'" + name.replace("'", "''") + "'"


def _parse_part(part: str) -> tuple[int | None, int | None] | None:
    """One side of an A1 reference: (column, row) with None for a missing half ("B" is a column,
    "7" a row), or None if it is not a reference. `$` markers are allowed where Excel puts them."""
    i = 1 if part.startswith("$") else 0
    j = i
    while j < len(part) and part[j].isascii() and part[j].isalpha():
        j += 1
    letters = part[i:j]
    k = j + 1 if part[j:j + 1] == "$" and letters else j
    digits = part[k:]
    if not letters and not digits:
        return None
    if letters and len(letters) > 3:
        return None
    if digits and not (digits.isascii() and digits.isdigit()):
        return None
    if letters and not digits and k != j:
        return None  # "$A$"
    col = column_index_from_string(letters.upper()) if letters else None
    row = int(digits) if digits else None
    return col, row


def parse_area(text: str) -> tuple[int, int, int, int] | str | None:
    """An A1 cell or range without a sheet ("B3", "$B$2:$C$13") as (min_col, min_row, max_col,
    max_row), 1-based inclusive; None if `text` is not a reference at all (it may be a name);
    a sentence (str) if it is a reference this engine refuses (whole columns or rows, outside
    the sheet)."""
    parts = text.split(":")
    if len(parts) > 2 or not all(parts):
        return None
    parsed = [_parse_part(p) for p in parts]
    if any(p is None for p in parsed):
        return None
    kinds = {"cell" if c is not None and r is not None else "column" if c is not None else "row" for c, r in parsed}
    if kinds != {"cell"}:
        if len(parsed) == 2 and kinds == {"row"}:
            return (f"the whole-row reference {text} is not supported: use an explicit range such "
                    f"as A{parts[0].lstrip('$')}:H{parts[1].lstrip('$')}")
        if len(parsed) == 2 and kinds == {"column"}:
            first, last = parts[0].lstrip("$"), parts[1].lstrip("$")
            return (f"the whole-column reference {text} is not supported: use an explicit range such "
                    f"as {first}2:{last}13 (a data sheet holds its rows from row 2 to row_count + 1)")
        return None  # "B" or "7" alone is a name; "A1:B" mixes a cell and a column
    cols = [c for c, _ in parsed]
    rows = [r for _, r in parsed]
    if any(c > EXCEL_MAX_COLUMNS for c in cols) or any(r < 1 or r > EXCEL_MAX_ROWS for r in rows):
        return f"the reference {text} is outside a worksheet (columns A to XFD, rows 1 to {EXCEL_MAX_ROWS:,})"
    return min(cols), min(rows), max(cols), max(rows)


def _split_sheet(value: str) -> tuple[str | None, str]:
    """(sheet prefix or None, the rest) of a reference operand such as `'MRR data'!B2:B13`."""
    if value.startswith("'"):
        i, buf = 1, []
        while i < len(value):
            ch = value[i]
            if ch == "'":
                if value[i + 1:i + 2] == "'":
                    buf.append("'")
                    i += 2
                    continue
                break
            buf.append(ch)
            i += 1
        else:
            raise FormulaRefused(f"the sheet name in {value} has no closing quote")
        rest = value[i + 1:]
        if not rest.startswith("!"):
            raise FormulaRefused(f"{value} is not a reference: a quoted sheet name must be followed by '!'")
        return "".join(buf), rest[1:]
    if "!" in value:
        sheet, rest = value.split("!", 1)
        return sheet, rest
    return None, value


def _check_operand(value: str, *, sheets: dict[str, str], names: dict[str, str]) -> tuple[str, Reference]:
    """Classify one reference operand; returns (its normalised text, the Reference). Raises FormulaRefused."""
    if value.startswith("@"):
        raise FormulaRefused(f"the implicit-intersection operator @ ({value}) is not supported; refer to the cell directly")
    if "|" in value:
        raise FormulaRefused(f"{value} is a DDE link (program|topic!item), which runs another program; DDE links are refused")
    sheet, ref = _split_sheet(value)
    canonical: str | None = None
    if sheet is not None:
        if "/" in sheet or "\\" in sheet:
            raise FormulaRefused(f"{value} refers to a file path or URL (external link); only this workbook's sheets may be referenced")
        if "[" in sheet or "]" in sheet:
            raise FormulaRefused(f"{value} refers to another workbook (external link); only this workbook's sheets may be referenced")
        if ":" in sheet:
            raise FormulaRefused(f"the 3-D reference {value} spans several sheets; refer to one sheet at a time")
        canonical = sheets.get(sheet.upper())
        if canonical is None:
            known = ", ".join(quote_sheet(s) for s in sheets.values())
            raise FormulaRefused(f"{value} refers to the sheet {quote_sheet(sheet)}, which is not in this workbook (its sheets: {known})")
    if "!" in ref:
        raise FormulaRefused(f"{value} has more than one sheet prefix; write a range once, e.g. 'Sheet'!A1:B2")
    if "[" in ref or "]" in ref:
        raise FormulaRefused(f"the table reference {value} is not supported; use a cell range")
    if "#" in ref:
        raise FormulaRefused(f"the spill reference {value} is not supported; use a cell range")
    area = parse_area(ref)
    if isinstance(area, str):
        raise FormulaRefused(area)
    if area is not None:
        text = ref.upper() if canonical is None else f"{quote_sheet(canonical)}!{ref.upper()}"
        return text, Reference(canonical, *area)
    if canonical is not None:
        raise FormulaRefused(f"{value} is not a cell reference (sheet-level names are not supported)")
    name = names.get(ref.upper())
    if name is None:
        listed = ", ".join(names.values()) or "none are defined"
        raise FormulaRefused(f"{value} is neither a cell reference nor a named input (named inputs: {listed})")
    return name, Reference(None, name=name)


def _check_function(raw: str) -> tuple[str, str]:
    """(upper-case name without prefix, the name as written to the file) of a function token's
    name (`SUM`, `_xlfn.XLOOKUP`). Raises FormulaRefused."""
    name = raw.upper()
    if name.startswith("@"):
        raise FormulaRefused(f"the implicit-intersection operator @ ({raw}(...)) is not supported")
    if name.startswith("_XLL."):
        raise FormulaRefused(f"{raw} is an add-in function, which runs code outside the workbook; add-in functions are refused")
    for prefix in ("_XLFN.", "_XLWS."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if not name or ":" in name or "!" in name or not (name[0].isalpha() or name[0] == "_"):
        raise FormulaRefused(f"{raw}(...) is not a function call this engine accepts (a range ending in a function call is not supported)")
    if name in REFUSED_FUNCTIONS:
        raise FormulaRefused(f"the function {name} is refused: {REFUSED_FUNCTIONS[name]}")
    if name not in ALLOWED_FUNCTIONS:
        allowed = ", ".join(sorted(ALLOWED_FUNCTIONS))
        if name in FORMULAE or name in _NEWER_FUNCTIONS:
            raise FormulaRefused(f"the function {name} is not on the allow-list (allowed: {allowed})")
        raise FormulaRefused(f"unknown function {raw} (allowed: {allowed})")
    return name, ("_xlfn." + name if name in _XLFN_FUNCTIONS else name)


_PARSER = formulas.Parser()


def check_formula(formula: str, *, sheets: Iterable[str], names: Iterable[str] = ()) -> CheckedFormula:
    """Check `formula` (text starting with '=') against the allow-list and the workbook's
    `sheets` and named inputs `names` (both matched case-insensitively, as Excel does).

    Returns the CheckedFormula (normalised text, functions, references); raises FormulaRefused
    with one sentence naming what was refused."""
    if not isinstance(formula, str) or not formula.startswith("=") or not formula[1:].strip():
        raise FormulaRefused("a formula must be text starting with '=' followed by an expression")
    if len(formula) > MAX_FORMULA_CHARS:
        raise FormulaRefused(f"the formula has {len(formula):,} characters; the limit is {MAX_FORMULA_CHARS:,}")
    sheet_map = {s.upper(): s for s in sheets}
    name_map = {n.upper(): n for n in names}
    try:
        tokens = Tokenizer(formula).items
    except (TokenizerError, IndexError, ValueError) as exc:
        if "|" in formula:
            raise FormulaRefused("the formula contains a DDE link (program|topic!item), which runs another program; DDE links are refused") from None
        raise FormulaRefused(f"the formula could not be parsed ({exc or 'unbalanced parentheses'})") from None
    functions: list[str] = []
    references: list[Reference] = []
    out: list[str] = []
    depth = 0
    for tok in tokens:
        value = tok.value
        if tok.type == Token.FUNC and tok.subtype == Token.OPEN:
            name, written = _check_function(value[:-1])
            functions.append(name)
            value = written + "("
        elif tok.type == Token.OPERAND and tok.subtype == Token.RANGE:
            value, ref = _check_operand(value, sheets=sheet_map, names=name_map)
            references.append(ref)
        elif tok.type == Token.OPERAND and tok.subtype == Token.TEXT:
            if len(value[1:-1].replace('""', '"')) > MAX_TEXT_LITERAL_CHARS:
                raise FormulaRefused(f"a text literal in the formula is longer than {MAX_TEXT_LITERAL_CHARS} characters (Excel's limit)")
        elif tok.type == Token.OPERAND and tok.subtype == Token.ERROR and value.upper() == "#REF!":
            raise FormulaRefused("the formula contains #REF!, a broken reference")
        if tok.subtype == Token.OPEN:
            depth += 1
            if depth > MAX_FORMULA_NESTING:
                raise FormulaRefused(f"the formula nests deeper than {MAX_FORMULA_NESTING} levels")
        elif tok.subtype == Token.CLOSE:
            depth -= 1
        out.append(value)
    text = "=" + "".join(out)
    try:
        _PARSER.ast(text)
    except Exception as exc:  # the formulas parser's own errors (FormulaError, ParenthesesError, ...)
        detail = exc.args[0] if exc.args else type(exc).__name__
        detail = str(detail).split("\n")[0].replace("%s", "").strip(" :") or type(exc).__name__
        raise FormulaRefused(f"the formula is not valid Excel syntax ({detail})") from None
    return CheckedFormula(text, tuple(functions), tuple(references))
