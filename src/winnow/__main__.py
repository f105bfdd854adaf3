"""``python -m winnow <group> <command>``: the entry point the rules call."""

from winnow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
