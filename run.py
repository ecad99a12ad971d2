"""`python run.py [-m] [overrides]`: the same as `feclip run` (`feclip/app.py`), for a checkout without an
installed `feclip` command. The configs are those of `feclip/conf/`."""

from feclip.app import main

if __name__ == "__main__":
    raise SystemExit(main())
