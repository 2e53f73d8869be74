"""Every "method §N" the code cites resolves to a section of docs/method.md, in the repo."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_cited_section_exists_in_docs_method():
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "method.md").read_text(), re.M))
    cited: dict[str, list[str]] = {}
    for folder in ("training", "search", "service", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for number in re.findall(r"(?:method|spec) §(\d+)", path.read_text()):
                cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    assert cited, "the code cites the method"
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert not missing, f"cited sections absent from docs/method.md: {missing}"
