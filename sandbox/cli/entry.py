"""The `glassbreak` console script. `glassbreak run ... -- CMD` goes straight to the daemon when
one is listening (standard library only); everything else loads the full click CLI."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        from sandbox.run import thinclient
        body = thinclient.parse_run(argv[1:])
        if body is not None:
            sock = thinclient.connect()
            if sock is not None:
                sys.exit(thinclient.run(sock, body))
    from sandbox.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":  # pragma: no cover
    main()
