"""Result tables as HTML the app renders itself (escaped text): headers wrap between words, never letter by letter,
a wide table scrolls inside its box instead of widening the page, and numbers line up on the right.

`html_table(df)` renders a pandas DataFrame (the tabs' pure functions build DataFrames, which tests read and
exports share); `empty` is the line shown instead of an empty table.
"""
from __future__ import annotations

import html
import numbers

import pandas as pd


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "<td></td>"
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return f'<td class="num">{html.escape(str(value))}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def html_table(df: pd.DataFrame | None, empty: str = "", caption: str = "") -> str:
    """<div class="lab-table"><table>…</table></div>, or the `empty` line when there are no rows."""
    if df is None or df.empty:
        return f'<p class="lab-empty">{html.escape(empty)}</p>' if empty else ""
    head = "".join(f'<th scope="col">{html.escape(str(c))}</th>' for c in df.columns)
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<div class="lab-table"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
