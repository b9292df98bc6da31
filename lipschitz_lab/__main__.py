import sys

from lipschitz_lab.cli import main

sys.exit(main())
