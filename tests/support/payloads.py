"""Where the example GitLab deliveries the tests (and the intake benchmark) post live."""

from __future__ import annotations

import json
from pathlib import Path

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"


def load_payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())
