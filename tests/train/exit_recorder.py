"""``exit_recorder.py CODES CMD…``: run CMD and append its exit code to CODES (a line per worker).

torchrun reports no worker exit codes when it is interrupted itself, so the Ctrl-C test launches
each worker through this wrapper. The wrapper ignores SIGINT/SIGTERM (the terminal's SIGINT
reaches the worker directly, in the same process group); only the worker's own code is noted.
"""

import signal
import subprocess
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _default_signals() -> None:  # ignored signals are inherited across exec: give the worker the defaults
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    code = subprocess.call(sys.argv[2:], preexec_fn=_default_signals)
    with open(sys.argv[1], "a") as fh:
        fh.write(f"{code}\n")
    sys.exit(code)
