"""Printing results: JSON for machines, small tables for people."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def print_table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def print_fields(fields: dict[str, Any]) -> None:
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        if value is not None and value != "" and value != []:
            sys.stdout.write(f"{key:<{width}}  {value}\n")


def vm_rows(vms: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    cols = ["NAME", "STATE", "VCPUS", "MEMORY", "MACHINE", "IMAGE", "PID", "REASON"]
    rows = [[v["name"], v["state"], v["vcpus"], f"{v['memory']}M", v["machine"], v.get("image"),
             v.get("pid"), v.get("reason")] for v in vms]
    return cols, rows
