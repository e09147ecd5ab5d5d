"""Join part1..3/results.json (see README.md) into results.json and table.md."""

import json
from pathlib import Path

from ternref.pretrained.ptq import PTQReport, PTQRow, format_table

here = Path(__file__).parent
parts = [json.loads((here / f"part{k}" / "results.json").read_text()) for k in (1, 2, 3)]
rows = [PTQRow(**row) for part in parts for row in part["rows"]]
packed = next(part["packed"] for part in parts if part["packed"])
settings = {**parts[0]["settings"], "parts": [part["settings"] for part in parts]}
report = PTQReport(rows=rows, packed=packed, settings=settings)
(here / "results.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
(here / "table.md").write_text(format_table(report) + "\n")
print(format_table(report))
