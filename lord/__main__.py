import sys

from lord.cli import main

sys.exit(main())
