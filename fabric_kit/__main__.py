"""``python -m fabric_kit run ...``: the ``fabric`` command without relying on the console script."""
from fabric_kit.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
