import sys

from progeo.cli import main

sys.exit(main())
