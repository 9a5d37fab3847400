"""args.py -- command-line helpers shared by ddm-torch-worker and
ddm-torch-train: getopt with one-line errors that say what to fix (the
wording of the C binaries' getopt_long parsers)."""
import getopt


class UsageError(Exception):
    """A bad command line; the program prints it and exits 2."""


def parse(argv, short, long):
    """getopt.gnu_getopt, with its errors as UsageError."""
    try:
        return getopt.gnu_getopt(argv, short, long)
    except getopt.GetoptError as e:
        opt = ("-" if len(e.opt) == 1 else "--") + e.opt
        if e.msg.endswith("requires argument"):
            raise UsageError(f"{opt} needs a value (see --help)") from None
        raise UsageError(f"unknown option \"{opt}\" (see --help)") from None


def integer(flag, s, lo, hi):
    """The whole decimal integer s of --flag, in lo..hi."""
    try:
        v = int(s, 10) if s.strip() == s else None
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise UsageError(f"--{flag} \"{s}\": expected an integer {lo}..{hi}")
    return v


def number(flag, s, lo, hi):
    """The number s of --flag, in [lo, hi]."""
    try:
        v = float(s)
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise UsageError(f"--{flag} \"{s}\": expected a number in [{lo}, {hi}]")
    return v
