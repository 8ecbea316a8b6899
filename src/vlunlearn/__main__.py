import sys

from vlunlearn.cli import main

sys.exit(main())
