"""Peak resident memory of this process, for the benchmarks that run each case in a fresh one.

Not ``ru_maxrss``: Linux carries the parent's peak RSS into it across fork + exec, so a child
started by a 350 MiB runner would report >= 350 MiB. ``VmHWM`` is this process's own peak, and
writing 5 to ``/proc/self/clear_refs`` resets it, so import-time peaks need not count.
"""

from __future__ import annotations


def status_kib(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (Linux >= 4.0), so import-time peaks do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True
