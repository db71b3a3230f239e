import sys

from grulab.cli import main

sys.exit(main())
