#!/usr/bin/env python
"""glcan's entry point.

    python train.py                                     the default comparison on the embedded data
    python train.py fit --config configs/NAME.yaml      train one run (then test it, write summary.json)
    python train.py memory --config configs/NAME.yaml   predict training memory without training
    python train.py compare --config BASE.yaml --grid model.method=e2e,local ...

`python train.py --help` lists every command; `python train.py COMMAND --help` its options.
"""

import sys

from glcan.cli import main

if __name__ == "__main__":  # Lightning re-runs this file for other DDP ranks: keep the guard
    sys.exit(main())
