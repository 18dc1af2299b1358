"""Where the shared sample statements and callbacks live (they are not part of the repo).

``FINLOCK_SAMPLES_DIR`` wins; otherwise ``../shared/samples`` next to the repo, then the
workplace's ``/work/shared/samples`` (CI runs from a fresh clone elsewhere on the machine).
"""

import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("FINLOCK_SAMPLES_DIR", ""),
    str(Path(__file__).resolve().parents[2] / "shared" / "samples"),
    "/work/shared/samples",
]

SAMPLES = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), Path(_CANDIDATES[1]))
