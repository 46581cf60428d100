import sys

from funclens.cli import main

sys.exit(main())
