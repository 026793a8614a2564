import sys

from af2cpu.cli import main

sys.exit(main())
