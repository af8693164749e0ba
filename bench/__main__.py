"""`python -m bench`: job measured against its references, side by side in one run. See bench/run.py."""

import sys

from bench.run import main

sys.exit(main())
