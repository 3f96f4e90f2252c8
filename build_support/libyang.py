"""Whether libyang's headers are there to build its Python bindings against (setup.py asks before anything).

Without them the bindings' build fails with a page of compiler errors; this says in one line which package to
install instead.  Plain Python, no imports of the package: setup.py runs it before the package exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable

MESSAGE = ("pnp-service: libyang's headers are missing: install libyang2-dev (Debian 12 and 13, Ubuntu 24.04: "
           "apt-get install libyang2-dev pkg-config gcc), then pip install again")
INCLUDE_DIRS = ("/usr/include", "/usr/local/include")


def missing_libyang(environ: dict | None = None, which: Callable = shutil.which, run: Callable = subprocess.run,
                    exists: Callable[[str], bool] = os.path.exists) -> str:
    """The one line to print when the headers are missing, else ""."""
    environ = os.environ if environ is None else environ
    if environ.get("LIBYANG_HEADERS") or environ.get("PNP_SKIP_LIBYANG_CHECK"):
        return ""  # headers given by hand (the bindings read LIBYANG_HEADERS), or a packager who knows
    if which("pkg-config") and run(["pkg-config", "--exists", "libyang"]).returncode == 0:
        return ""
    if any(exists(os.path.join(folder, "libyang", "libyang.h")) for folder in INCLUDE_DIRS):
        return ""
    return MESSAGE
