"""This process's peak resident memory in MB, for the reference scripts' reports.

Read from the kernel's high-water mark (VmHWM in /proc/self/status), which starts afresh with
the process image: getrusage's ru_maxrss would carry over the peak of the process that
started this one (kd, which may have loaded several models by then).
"""

import resource


def peak_rss_mb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
