"""`python -m llava_avc` = the `llava-avc` command."""

import sys

from .cli import main

sys.exit(main())
