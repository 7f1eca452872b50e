"""Which of torch and transformers a piece of code loads, run in a fresh interpreter.

The stages that need neither (ranking by the rules, the cost stage's skip) are checked with this:
importing them costs about 10 s a stage on the demo machine.
"""

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers")


def heavy_modules_loaded_by(script: str, cwd: Path) -> list[str]:
    """Run `script` in a new Python in `cwd`; the HEAVY modules in sys.modules when it ends."""
    check = f"{script}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", check], check=False, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # the last line: the list the check printed
