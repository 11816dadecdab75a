"""The project's install script (infra/local/install.sh) run for what is about to be used: `make up` installs
what the stack it starts runs, and nothing else, on first use."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

from ragtrace_tools.devstack.servers import LOCAL_INFRA

INSTALL_SCRIPT = LOCAL_INFRA / "install.sh"


class InstallError(RuntimeError):
    """The install script failed; its own lines, above, say where."""


def install(components: Iterable[str]) -> None:
    """Install these install.sh components unless present (a file test each); the script names each missing one
    and roughly how long it takes before installing it, on this process's stderr."""
    wanted = list(dict.fromkeys(components))
    if not wanted:
        return
    result = subprocess.run([str(INSTALL_SCRIPT), *wanted], check=False)  # noqa: S603 - fixed script, known names
    if result.returncode != 0:
        raise InstallError(f"infra/local/install.sh {' '.join(wanted)} failed (exit {result.returncode}; see above)")


def command_on_first_use(command: str, component: str) -> str:
    """The path of `command`, its install.sh component installed first when it is not on PATH (Chromium for the
    page's tests)."""
    if shutil.which(command) is None:
        install([component])
    found = shutil.which(command)
    if found is None:
        raise InstallError(f"{command} is still not on PATH after infra/local/install.sh {component}")
    return found
