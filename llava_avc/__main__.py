"""`python -m llava_avc` = the `llava-avc` command."""

import sys

from .interfaces.cli import main

sys.exit(main())
