"""Command line: ``python -m sklearn_cim demo`` (or ``sklearn-cim demo``)."""

import argparse

from . import demo


def build_parser():
    """The ``sklearn-cim`` parser, one subparser per command (``demo``)."""
    parser = argparse.ArgumentParser(
        prog="sklearn-cim", description="sklearn_cim: Contrastive Input Morphing for "
                                        "scikit-learn.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_arguments(commands.add_parser(
        "demo", help="CIM, VIB, ERM and an oracle on coloured digits: one table and a "
                     "mask figure (minutes on a CPU)",
        description=demo.DESCRIPTION))
    return parser


def main(argv=None):
    """Run a ``sklearn-cim`` command; return 0 (the process exit status).

    Parameters
    ----------
    argv : list of str or None, default=None
        The command and its options, e.g. ``["demo", "--quick"]``; None reads
        ``sys.argv``.

    Returns
    -------
    status : int
        0 on success (argparse exits with status 2 on bad options).
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        demo.run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
