"""Exec a command under the kernel's MemoryDenyWriteExecute: prctl(PR_SET_MDWE).

systemd's MemoryDenyWriteExecute=yes is a seccomp filter refusing writable+executable
mappings (and making a mapping executable later).  Linux >= 6.3 offers the same rule
as prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), kept across fork and execve, so the
packaged daemon can be started under it without systemd as PID 1.  Before exec'ing,
this proves the rule is in force (a W+X mmap fails).  Usage: mdwe_exec.py CMD ARGS...
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(f"mdwe_exec: prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}")
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        sys.exit("mdwe_exec: a writable+executable mapping was allowed")
    print(f"mdwe_exec: MDWE flags {libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)}", file=sys.stderr)
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
