"""What a job or pipeline step returns: a frozen record whose fields callers read, and which is
written as it is to the job's JSON file (``prmu_eval.json``, ``sft_eval.json``, ``rl_report.json``,
the run's ``summary.json``), so the file and the returned value cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Record:
    def to_json(self) -> dict[str, Any]:
        """The fields in declaration order, nested records as dicts. A field declared ``= None`` is a
        part a run may not produce (SFT's ``before`` when it was not scored): left out while None."""
        absent = {f.name for f in fields(self) if f.default is None and getattr(self, f.name) is None}
        return {k: v for k, v in asdict(self).items() if k not in absent}
