"""What the plotting scripts share: matplotlib with the Agg backend, from Debian's python3 when
the running interpreter (e.g. a virtual environment) lacks it."""
import os
import sys


def import_pyplot(script):
    try:
        import matplotlib
    except ImportError:
        system = "/usr/bin/python3"
        if os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system):
            os.execv(system, [system] + sys.argv)
        sys.exit(f"{script}: needs matplotlib (Debian: apt-get install python3-matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
