import sys

from sdfn.cli import main

sys.exit(main())
