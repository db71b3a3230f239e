import sys

from grulab.cli import main

if __name__ == "__main__":  # guarded: `grulab lab run --jobs N` starts worker processes that import this module
    sys.exit(main())
