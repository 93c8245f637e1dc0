"""A corpus of messy finance exports, written byte for byte, for ingest tests (and any other test).

``CSV`` maps a file name to its exact bytes (BOMs, latin-1 bytes and line endings are real);
`write_csv` puts one in a folder and `write_xlsx` builds a workbook from lists of rows.
"""

from __future__ import annotations

from pathlib import Path

import openpyxl

BOM = b"\xef\xbb\xbf"


def _lines(*rows: str, eol: str = "\n", encoding: str = "utf-8") -> bytes:
    return "".join(r + eol for r in rows).encode(encoding)


CSV: dict[str, bytes] = {
    # German bank export: BOM, ';', CRLF, European numbers, dotted dates, account codes with zeros.
    "bank_eu.csv": BOM
    + _lines(
        "Buchungstag;Valuta;Betrag;Konto;Text",
        "31.12.2024;01.02.2024;1.234,56;0815;Miete",
        "02.01.2024;03.02.2024;-7,5;0816;Kaffee",
        "15.03.2024;04.02.2024;12.000;0817;Bonus",
        eol="\r\n",
    ),
    # Tab-separated, quoted fields with embedded newlines and doubled quotes.
    "notes.tsv": _lines(
        "id\tmemo\tamount",
        '1\t"first line\nsecond line"\t10',
        '2\t"He said ""hi"""\t20',
        "3\tplain\t30",
    ),
    # Windows-1252: the euro sign is byte 0x80, u-umlaut 0xfc, e-acute 0xe9.
    "cp1252.csv": _lines(
        "Kunde;Betrag;Ort", "Müller;€ 1.234,50;Zürich", "Café Noir;€ 7,00;Genève", encoding="cp1252"
    ),
    # US accounting export: currency symbols, thousands separators, negatives, percentages, codes.
    "us_money.csv": _lines(
        "Account,Amount,Units,Margin,Rate,Refund,Zip",
        '4000,"$1,234.56","1,200",12.5%,1.0825,(123.45),02134',
        '4010,"€1,000.00",7,-3%,0.9,45.10-,10001',
        "4020,£7,N/A,100%,1.5,$0.99,94105",
        "4030,n/a,-,#N/A,,(5),00501",
    ),
    # Day/month dates: unambiguous DMY, unambiguous MDY, ambiguous, ISO, timestamps, month names.
    "dates.csv": _lines(
        "dmy,mdy,ambiguous,iso,stamp,named,dmy_time",
        "13/01/2024,01/13/2024,03/04/2024,2024-12-31,2024-01-31 13:45:00,31-Dec-2024,25/12/2024 08:30",
        "01/02/2024,02/01/2024,05/06/2024,2024-02-29,2024-02-01T00:00:01,01-Jan-2025,01/01/2024 23:59",
    ),
    # Ambiguous '/' dates next to an unambiguous day-first column: the evidence decides DMY.
    "dates_evidence.csv": _lines("paid,booked", "03/04/2024,25/12/2024", "05/06/2024,01/02/2024"),
    # Blank, duplicate and odd headers; two empty trailing columns; an empty row in between.
    "headers.csv": _lines(
        "Invoice No, Amount ,,amount,Order,2024 Budget,Net %,,",
        "A-1,10,x,1.5,o1,100,5%,,",
        ",,,,,,,,",
        "A-2,20,y,2.5,o2,200,6%,,",
    ),
    # Short rows (padded with NULLs) around quoted newlines; the last row is complete (empty last field).
    "short_rows.csv": _lines("a,b,c", '1,"x\ny",3', "4,5", "6,7,8", "9", "10,11,"),
    # Row 3 has an unquoted comma inside a value: 4 fields under a 3-column header.
    "too_many.csv": _lines(
        "name,amount,date", "Acme,100,2024-01-01", "Acme, Inc,200,2024-01-02", "Beta,300,2024-01-03"
    ),
    # A report title and a blank line above the header.
    "title.csv": _lines("ACME Corp - Sales Q4", "", "Date,Amount,Memo", "2024-10-01,5,a", "2024-10-02,6,"),
    "header_only.csv": _lines("Date,Amount,Memo"),
    "empty.csv": b"",
    "garbage.csv": bytes(range(256)) * 8,
    "workbook_renamed.csv": b"PK\x03\x04" + b"\x00" * 60,
    # Excel "Unicode text" export: UTF-16 LE with BOM, tab separated.
    "utf16.txt": "\ufeffname\tamount\r\nM\u00fcller\t1.5\r\n".encode("utf-16-le"),
}


def late_na_csv(rows: int = 20_500) -> bytes:
    """``id,amount``: integers on every row, then one ``N/A`` beyond DuckDB's default sample."""
    return b"id,amount\n" + b"".join(b"%d,%d\n" % (i, i * 2) for i in range(rows)) + b"%d,N/A\n" % rows


def write_csv(folder: Path, name: str, data: bytes | None = None) -> Path:
    """Write ``CSV[name]`` (or ``data``) to ``folder/name`` and return the path."""
    path = Path(folder) / name
    path.write_bytes(CSV[name] if data is None else data)
    return path


def write_xlsx(
    path: Path, sheets: dict[str, list[list[object]]], formats: dict[str, dict[str, str]] | None = None
) -> Path:
    """A workbook with one worksheet per item (rows of cell values, None = empty cell).

    ``formats`` optionally maps a sheet to ``{cell: number_format}``, e.g. ``{"Q1": {"C2": "0.0%"}}``.
    """
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for r, row in enumerate(rows, start=1):
            for c, value in enumerate(row, start=1):
                if value is not None:
                    ws.cell(row=r, column=c, value=value)
        for cell, fmt in (formats or {}).get(title, {}).items():
            ws[cell].number_format = fmt
    wb.save(path)
    return Path(path)
