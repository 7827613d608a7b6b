"""Results as data: a ``Table`` of rows (dicts) with a text view, ``to_pandas()`` and a
JSON-ready ``to_dict()``. Printing and plotting are views of it."""
from __future__ import annotations

import numbers

__all__ = ["Table"]


def _cell(v, fmt=None):
    if v is None:
        return "-"
    if fmt is not None:
        return format(v, fmt)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    return f"{float(v):.4g}"


class Table:
    """Rows of a result. ``columns`` fixes the order (default: keys of the first row);
    ``formats`` maps a column to a format spec for the text view."""

    def __init__(self, rows=(), columns=None, title=None, formats=None):
        self.rows = [dict(r) for r in rows]
        if columns is None:
            columns = []
            for r in self.rows:
                columns += [k for k in r if k not in columns]
        self.columns = list(columns)
        self.title = title
        self.formats = dict(formats or {})

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def column(self, name):
        if name not in self.columns:
            raise KeyError(f"{type(self).__name__}: no column {name!r} (columns: {', '.join(self.columns)})")
        return [r.get(name) for r in self.rows]

    def where(self, **match):
        """The rows whose values equal all of ``match``."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]

    def to_pandas(self):
        import pandas as pd
        return pd.DataFrame(self.rows, columns=self.columns)

    def to_dict(self):
        return {"title": self.title, "columns": self.columns, "rows": self.rows}

    def __str__(self):
        cells = [[str(c) for c in self.columns]]
        cells += [[_cell(r.get(c), self.formats.get(c)) for c in self.columns] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
        rule = "-" * (sum(widths) + 2 * max(len(widths) - 1, 0))
        out = ([self.title] if self.title else []) + [lines[0], rule] + lines[1:]
        return "\n".join(out)

    __repr__ = __str__
