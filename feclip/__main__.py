"""`python -m feclip ...` = the `feclip` command (`feclip.console`)."""

from feclip.console import main

if __name__ == "__main__":
    raise SystemExit(main())
