"""`python -m kdforge ...` is the same as the `kdforge` command."""

import sys

from kdforge.cli import main

sys.exit(main())
