"""Run a module as `__main__` and write this process's own peak RSS (VmHWM, kB) to a file
when it exits: `python -m bench.peak OUT MODULE ARGS...`.

`ru_maxrss` from `wait4` is no good for a child of the bench: Linux carries the high-water
mark over fork and exec, so a child forked from a bench process holding 120 MB reports
120 MB whatever it used. VmHWM belongs to the address space exec made, and starts afresh.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def vmhwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    out, module, *args = sys.argv[1:]
    atexit.register(lambda: Path(out).write_text(str(vmhwm_kb())))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
